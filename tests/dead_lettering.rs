//! Dead-letter exchanges: rejected, expired and overflowing messages go to the queue's
//! dead-letter exchange with RabbitMQ's `x-death` story in their headers.

mod common;

use amq_protocol::types::{AMQPValue, FieldArray, FieldTable};
use common::*;
use futures_lite::StreamExt;
use lapin::options::*;
use lapin::{BasicProperties, Channel, ExchangeKind};

async fn declare(ch: &Channel, name: &str, args: FieldTable) {
    within(ch.queue_declare(name.into(), Default::default(), args))
        .await
        .expect("queue declared");
}

async fn exchange(ch: &Channel, name: &str, kind: ExchangeKind) {
    within(ch.exchange_declare(name.into(), kind, Default::default(), FieldTable::default()))
        .await
        .expect("exchange declared");
}

async fn bind(ch: &Channel, queue: &str, exchange: &str, key: &str) {
    within(ch.queue_bind(
        queue.into(),
        exchange.into(),
        key.into(),
        Default::default(),
        FieldTable::default(),
    ))
    .await
    .expect("bound");
}

async fn publish(ch: &Channel, exchange: &str, key: &str, body: &[u8], props: BasicProperties) {
    within(ch.basic_publish(exchange.into(), key.into(), Default::default(), body, props))
        .await
        .expect("published");
}

/// Waits for the next message of `queue` (basic.get until one arrives).
async fn next_message(ch: &Channel, queue: &str) -> lapin::message::BasicGetMessage {
    within(async {
        loop {
            if let Some(m) = ch
                .basic_get(queue.into(), BasicGetOptions { no_ack: true })
                .await
                .expect("basic.get")
            {
                return m;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await
}

fn headers(m: &lapin::message::BasicGetMessage) -> FieldTable {
    m.delivery.properties.headers().clone().expect("headers")
}

fn get<'a>(t: &'a FieldTable, key: &str) -> &'a AMQPValue {
    t.inner()
        .get(key)
        .unwrap_or_else(|| panic!("no {key} in {t:?}"))
}

fn text(v: &AMQPValue) -> String {
    match v {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        other => panic!("not a string: {other:?}"),
    }
}

fn deaths(h: &FieldTable) -> Vec<FieldTable> {
    match get(h, "x-death") {
        AMQPValue::FieldArray(a) => a
            .as_slice()
            .iter()
            .map(|v| match v {
                AMQPValue::FieldTable(t) => t.clone(),
                other => panic!("not a table: {other:?}"),
            })
            .collect(),
        other => panic!("x-death is not an array: {other:?}"),
    }
}

fn count(death: &FieldTable) -> i64 {
    match get(death, "count") {
        AMQPValue::LongLongInt(n) => *n,
        other => panic!("count is {other:?}"),
    }
}

fn dlx_args(dlx: &str) -> FieldTable {
    table(&[("x-dead-letter-exchange", long_str(dlx))])
}

#[tokio::test]
async fn same_as_rabbitmq_a_rejected_message_goes_to_the_dead_letter_exchange_with_x_death() {
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    exchange(&ch, "dlx", ExchangeKind::Fanout).await;
    declare(&ch, "dlq", FieldTable::default()).await;
    bind(&ch, "dlq", "dlx", "").await;
    declare(&ch, "work", dlx_args("dlx")).await;
    publish(
        &ch,
        "",
        "work",
        b"job",
        BasicProperties::default().with_message_id("m1".into()),
    )
    .await;
    let m = within(ch.basic_get("work".into(), Default::default()))
        .await
        .unwrap()
        .expect("the job");
    within(m.delivery.reject(BasicRejectOptions { requeue: false }))
        .await
        .unwrap();

    let dead = next_message(&ch, "dlq").await;
    assert_eq!(dead.delivery.data, b"job");
    assert_eq!(dead.delivery.exchange.as_str(), "dlx");
    assert_eq!(dead.delivery.routing_key.as_str(), "work");
    assert_eq!(
        dead.delivery
            .properties
            .message_id()
            .as_ref()
            .map(|s| s.as_str()),
        Some("m1"),
        "other properties are kept"
    );
    let h = headers(&dead);
    assert_eq!(text(get(&h, "x-first-death-reason")), "rejected");
    assert_eq!(text(get(&h, "x-first-death-queue")), "work");
    assert_eq!(text(get(&h, "x-first-death-exchange")), "");
    let d = deaths(&h);
    assert_eq!(d.len(), 1);
    assert_eq!(count(&d[0]), 1);
    assert_eq!(text(get(&d[0], "reason")), "rejected");
    assert_eq!(text(get(&d[0], "queue")), "work");
    assert_eq!(text(get(&d[0], "exchange")), "");
    assert_eq!(
        get(&d[0], "routing-keys"),
        &AMQPValue::FieldArray(FieldArray::from(vec![long_str("work")]))
    );
    assert!(matches!(get(&d[0], "time"), AMQPValue::Timestamp(_)));
    assert!(!d[0].inner().contains_key("original-expiration"));
}

#[tokio::test]
async fn same_as_rabbitmq_nack_without_requeue_dead_letters_and_requeue_does_not() {
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    exchange(&ch, "dlx", ExchangeKind::Fanout).await;
    declare(&ch, "dlq", FieldTable::default()).await;
    bind(&ch, "dlq", "dlx", "").await;
    declare(&ch, "work", dlx_args("dlx")).await;
    for body in ["a", "b", "c"] {
        publish(&ch, "", "work", body.as_bytes(), Default::default()).await;
    }
    let mut consumer = within(ch.basic_consume(
        "work".into(),
        "c".into(),
        Default::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    let mut last = None;
    for _ in 0..3 {
        last = Some(within(consumer.next()).await.unwrap().unwrap());
    }
    let last = last.unwrap();
    within(last.nack(BasicNackOptions {
        multiple: true,
        requeue: false,
    }))
    .await
    .unwrap();
    let bodies: Vec<Vec<u8>> = vec![
        next_message(&ch, "dlq").await.delivery.data,
        next_message(&ch, "dlq").await.delivery.data,
        next_message(&ch, "dlq").await.delivery.data,
    ];
    assert_eq!(bodies, [b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);
}

#[tokio::test]
async fn same_as_rabbitmq_a_dead_letter_routing_key_replaces_the_keys_and_drops_cc() {
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    exchange(&ch, "dlx", ExchangeKind::Direct).await;
    declare(&ch, "retry", FieldTable::default()).await;
    bind(&ch, "retry", "dlx", "to-retry").await;
    declare(
        &ch,
        "work",
        table(&[
            ("x-dead-letter-exchange", long_str("dlx")),
            ("x-dead-letter-routing-key", long_str("to-retry")),
        ]),
    )
    .await;
    let cc = table(&[(
        "CC",
        AMQPValue::FieldArray(FieldArray::from(vec![long_str("elsewhere")])),
    )]);
    publish(
        &ch,
        "",
        "work",
        b"x",
        BasicProperties::default().with_headers(cc),
    )
    .await;
    let m = within(ch.basic_get("work".into(), Default::default()))
        .await
        .unwrap()
        .unwrap();
    within(m.delivery.reject(BasicRejectOptions { requeue: false }))
        .await
        .unwrap();
    let dead = next_message(&ch, "retry").await;
    assert_eq!(dead.delivery.routing_key.as_str(), "to-retry");
    let h = headers(&dead);
    assert!(!h.inner().contains_key("CC"), "CC is removed");
    // x-death records the keys the message was published with, CC included.
    assert_eq!(
        get(&deaths(&h)[0], "routing-keys"),
        &AMQPValue::FieldArray(FieldArray::from(vec![
            long_str("work"),
            long_str("elsewhere")
        ]))
    );
}

#[tokio::test]
async fn same_as_rabbitmq_without_a_dead_letter_routing_key_cc_and_bcc_keys_route_again() {
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    exchange(&ch, "dlx", ExchangeKind::Direct).await;
    declare(&ch, "by-bcc", FieldTable::default()).await;
    bind(&ch, "by-bcc", "dlx", "secret").await;
    declare(&ch, "work", dlx_args("dlx")).await;
    let bcc = table(&[(
        "BCC",
        AMQPValue::FieldArray(FieldArray::from(vec![long_str("secret")])),
    )]);
    publish(
        &ch,
        "",
        "work",
        b"x",
        BasicProperties::default().with_headers(bcc),
    )
    .await;
    let m = within(ch.basic_get("work".into(), Default::default()))
        .await
        .unwrap()
        .unwrap();
    within(m.delivery.reject(BasicRejectOptions { requeue: false }))
        .await
        .unwrap();
    let dead = next_message(&ch, "by-bcc").await;
    assert_eq!(dead.delivery.data, b"x");
    assert!(!headers(&dead).inner().contains_key("BCC"));
}

#[tokio::test]
async fn same_as_rabbitmq_expired_messages_are_dead_lettered_without_their_expiration() {
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    exchange(&ch, "dlx", ExchangeKind::Fanout).await;
    declare(&ch, "dlq", FieldTable::default()).await;
    bind(&ch, "dlq", "dlx", "").await;
    declare(&ch, "short-lived", dlx_args("dlx")).await;
    publish(
        &ch,
        "",
        "short-lived",
        b"soon gone",
        BasicProperties::default().with_expiration("20".into()),
    )
    .await;
    // Nobody consumes: the queue's timer expires the message.
    let dead = next_message(&ch, "dlq").await;
    assert!(dead.delivery.properties.expiration().is_none());
    let h = headers(&dead);
    let d = deaths(&h);
    assert_eq!(text(get(&d[0], "reason")), "expired");
    assert_eq!(text(get(&d[0], "original-expiration")), "20");
}

#[tokio::test]
async fn same_as_rabbitmq_a_missing_dead_letter_exchange_drops_the_message() {
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    declare(&ch, "work", dlx_args("nowhere")).await;
    publish(&ch, "", "work", b"x", Default::default()).await;
    let m = within(ch.basic_get("work".into(), Default::default()))
        .await
        .unwrap()
        .unwrap();
    within(m.delivery.reject(BasicRejectOptions { requeue: false }))
        .await
        .unwrap();
    let q = within(ch.queue_declare(
        "work".into(),
        QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    ))
    .await
    .unwrap();
    assert_eq!(q.message_count(), 0);
}

#[tokio::test]
async fn same_as_rabbitmq_an_expiry_cycle_back_to_the_same_queue_drops_the_message() {
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    // Expired messages go to the default exchange with the queue's own name: back to
    // itself. RabbitMQ drops them rather than cycle forever.
    declare(
        &ch,
        "loop",
        table(&[
            ("x-dead-letter-exchange", long_str("")),
            ("x-message-ttl", AMQPValue::LongInt(10)),
        ]),
    )
    .await;
    // A second queue sees every message, to know when the first one was expired.
    exchange(&ch, "fan", ExchangeKind::Fanout).await;
    bind(&ch, "loop", "fan", "").await;
    declare(&ch, "witness", FieldTable::default()).await;
    bind(&ch, "witness", "fan", "").await;
    publish(&ch, "fan", "loop", b"x", Default::default()).await;
    next_message(&ch, "witness").await;
    within(async {
        loop {
            let q = ch
                .queue_declare(
                    "loop".into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await
                .unwrap();
            if q.message_count() == 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await;
    // It stays gone.
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let q = within(ch.queue_declare(
        "loop".into(),
        QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    ))
    .await
    .unwrap();
    assert_eq!(q.message_count(), 0);
}

#[tokio::test]
async fn same_as_rabbitmq_a_retry_loop_counts_each_death_per_queue_and_reason() {
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    // work --reject--> retry-x --> wait (TTL) --expire--> work-x --> work
    exchange(&ch, "retry-x", ExchangeKind::Fanout).await;
    exchange(&ch, "work-x", ExchangeKind::Fanout).await;
    declare(&ch, "work", dlx_args("retry-x")).await;
    bind(&ch, "work", "work-x", "").await;
    declare(
        &ch,
        "wait",
        table(&[
            ("x-dead-letter-exchange", long_str("work-x")),
            ("x-message-ttl", AMQPValue::LongInt(20)),
        ]),
    )
    .await;
    bind(&ch, "wait", "retry-x", "").await;
    publish(&ch, "work-x", "", b"task", Default::default()).await;
    let mut consumer = within(ch.basic_consume(
        "work".into(),
        "worker".into(),
        Default::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    let mut seen = Vec::new();
    for _ in 0..3 {
        let d = within(consumer.next()).await.unwrap().unwrap();
        let counts: Vec<(String, String, i64)> = d
            .properties
            .headers()
            .as_ref()
            .map(|h| {
                let h = h.clone();
                match h.inner().get("x-death") {
                    Some(AMQPValue::FieldArray(a)) => a
                        .as_slice()
                        .iter()
                        .map(|v| match v {
                            AMQPValue::FieldTable(t) => {
                                (text(get(t, "queue")), text(get(t, "reason")), count(t))
                            }
                            _ => panic!(),
                        })
                        .collect(),
                    _ => Vec::new(),
                }
            })
            .unwrap_or_default();
        seen.push(counts);
        within(d.reject(BasicRejectOptions { requeue: false }))
            .await
            .unwrap();
    }
    assert_eq!(seen[0], vec![]);
    assert_eq!(
        seen[1],
        vec![
            ("wait".into(), "expired".into(), 1),
            ("work".into(), "rejected".into(), 1)
        ]
    );
    assert_eq!(
        seen[2],
        vec![
            ("wait".into(), "expired".into(), 2),
            ("work".into(), "rejected".into(), 2)
        ]
    );
}

/// A fanout dead-letter exchange bound back to the ten queues that dead-letter into it (TTL
/// 0): each generation of dead letters goes to every queue it has not died in yet, as
/// RabbitMQ's cycle rule allows, about e·10! = 9.9 million dead letters from one publish
/// (and 1.3e9 with 12 queues), which held the broker's dead-letter thread for as long and
/// filled its memory. Lepus stops the line after 100,000 copies; a retry loop (one queue
/// per generation, as in `same_as_rabbitmq_a_retry_loop_counts_each_death_per_queue_and_reason`)
/// spends none of them.
#[tokio::test]
async fn a_dead_letter_exchange_that_multiplies_a_message_stops_after_a_bounded_number() {
    let broker = Broker::start().await;
    let (_conn, ch) = broker.channel().await;
    exchange(&ch, "boom", ExchangeKind::Fanout).await;
    for i in 0..10 {
        let name = format!("boom-{i}");
        let args = table(&[
            ("x-message-ttl", AMQPValue::LongInt(0)),
            ("x-dead-letter-exchange", long_str("boom")),
        ]);
        declare(&ch, &name, args).await;
        bind(&ch, &name, "boom", "").await;
    }
    declare(&ch, "boom-seen", FieldTable::default()).await;
    bind(&ch, "boom-seen", "boom", "").await;
    publish(&ch, "boom", "", b"once", BasicProperties::default()).await;
    // Wait until the dead letters stop coming.
    let mut last = u32::MAX;
    let mut same = 0;
    let seen = within(async {
        loop {
            let n = message_count(&ch, "boom-seen").await;
            same = if n == last { same + 1 } else { 0 };
            last = n;
            if same == 10 && n > 1 {
                return n;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(seen < 200_000, "{seen} dead letters of one message");
}

/// Same as RabbitMQ: a message rejected after its queue was deleted is gone; it is not
/// dead-lettered (RabbitMQ settles a deleted queue's deliveries with nothing).
#[tokio::test]
async fn same_as_rabbitmq_a_reject_after_the_queue_is_deleted_does_not_dead_letter() {
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    let (_c2, other) = broker.channel().await;
    exchange(&ch, "dlx", ExchangeKind::Fanout).await;
    declare(&ch, "dlq", FieldTable::default()).await;
    bind(&ch, "dlq", "dlx", "").await;
    declare(&ch, "gone", dlx_args("dlx")).await;
    publish(&ch, "", "gone", b"held", Default::default()).await;
    let held = within(ch.basic_get("gone".into(), BasicGetOptions { no_ack: false }))
        .await
        .unwrap()
        .expect("the message");
    within(other.queue_delete("gone".into(), Default::default()))
        .await
        .unwrap();
    within(held.delivery.nack(BasicNackOptions {
        multiple: false,
        requeue: false,
    }))
    .await
    .unwrap();
    publish(&ch, "", "dlq", b"marker", Default::default()).await;
    assert_eq!(next_message(&ch, "dlq").await.delivery.data, b"marker");
}

/// Each death adds an `x-death` entry that lists the message's CC keys, and without a
/// dead-letter routing key the CC header stays: a message carrying 8 KB of CC keys, sent down
/// a chain of queues, grows by 8 KB a hop (a 120 KB list round 2,000 queues was 240 MB,
/// copied at each hop). Once its properties no longer fit in a frame the broker takes, no
/// consumer could be sent it, and it is dropped. (RabbitMQ goes on growing it, and its
/// consumers' clients fail on the oversized frame.) A message without CC keys goes down the
/// same chain to its end.
#[tokio::test]
async fn a_dead_letter_grown_past_a_frame_is_dropped() {
    let mut config = Config::for_tests();
    config.limits.frame_max_bytes = 32 * 1024;
    let broker = Broker::start_with(config).await;
    let (_conn, ch) = broker.channel().await;
    const HOPS: usize = 8;
    for i in 0..HOPS {
        let next = format!("grow-x{}", i + 1);
        exchange(&ch, &next, ExchangeKind::Fanout).await;
        let args = table(&[
            ("x-message-ttl", AMQPValue::LongInt(0)),
            ("x-dead-letter-exchange", long_str(&next)),
        ]);
        declare(&ch, &format!("grow-{i}"), args).await;
        if i > 0 {
            bind(&ch, &format!("grow-{i}"), &format!("grow-x{i}"), "").await;
        }
    }
    declare(&ch, "grow-end", FieldTable::default()).await;
    bind(&ch, "grow-end", &format!("grow-x{HOPS}"), "").await;
    let cc: Vec<AMQPValue> = (0..80).map(|i| long_str(&format!("{i:0>100}"))).collect();
    let big =
        BasicProperties::default().with_headers(table(&[("CC", AMQPValue::FieldArray(cc.into()))]));
    publish(&ch, "", "grow-0", b"big", big).await;
    publish(&ch, "", "grow-0", b"small", BasicProperties::default()).await;
    // Both went down the chain in order: the first to reach its end is the small one.
    let first = next_message(&ch, "grow-end").await;
    assert_eq!(first.delivery.data, b"small");
    assert_eq!(deaths(&headers(&first)).len(), HOPS);
    assert_eq!(message_count(&ch, "grow-end").await, 0);
}
