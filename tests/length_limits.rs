//! Length limits (`x-max-length`, `x-max-length-bytes`) and what a full queue does
//! (`x-overflow`), as RabbitMQ 3.10 does it: limits count ready messages only.

mod common;

use amq_protocol::types::{AMQPValue, FieldTable};
use common::*;
use futures_lite::StreamExt;
use lapin::options::*;
use lapin::{Channel, ExchangeKind};

async fn declare(ch: &Channel, name: &str, args: FieldTable) {
    within(ch.queue_declare(name.into(), Default::default(), args))
        .await
        .expect("queue declared");
}

/// Publishes with confirms; returns whether the broker acked.
async fn confirmed(ch: &Channel, exchange: &str, key: &str, body: &str) -> bool {
    let confirm = within(ch.basic_publish(
        exchange.into(),
        key.into(),
        BasicPublishOptions {
            mandatory: true,
            ..Default::default()
        },
        body.as_bytes(),
        Default::default(),
    ))
    .await
    .unwrap();
    let c = within(confirm).await.unwrap();
    let acked = c.is_ack();
    assert!(
        c.take_message().is_none(),
        "a routed message is never returned"
    );
    acked
}

fn limit(key: &str, n: i32, overflow: Option<&str>) -> FieldTable {
    let mut t = table(&[(key, AMQPValue::LongInt(n))]);
    if let Some(o) = overflow {
        t.insert("x-overflow".into(), long_str(o));
    }
    t
}

#[tokio::test]
async fn same_as_rabbitmq_drop_head_keeps_the_newest_and_the_publisher_sees_nothing() {
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    within(ch.confirm_select(Default::default())).await.unwrap();
    declare(&ch, "q", limit("x-max-length", 3, None)).await;
    for i in 1..=5 {
        assert!(confirmed(&ch, "", "q", &format!("m{i}")).await);
    }
    assert_eq!(bodies(&ch, "q").await, ["m3", "m4", "m5"]);
}

#[tokio::test]
async fn same_as_rabbitmq_max_length_bytes_counts_bodies() {
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    declare(&ch, "q", limit("x-max-length-bytes", 10, None)).await;
    for body in ["aaaa", "bbbb", "cccc"] {
        within(ch.basic_publish(
            "".into(),
            "q".into(),
            Default::default(),
            body.as_bytes(),
            Default::default(),
        ))
        .await
        .unwrap();
    }
    assert_eq!(bodies(&ch, "q").await, ["bbbb", "cccc"]);
}

#[tokio::test]
async fn same_as_rabbitmq_reject_publish_nacks_but_other_queues_still_get_it() {
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    within(ch.confirm_select(Default::default())).await.unwrap();
    within(ch.exchange_declare(
        "fan".into(),
        ExchangeKind::Fanout,
        Default::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    declare(
        &ch,
        "full",
        limit("x-max-length", 1, Some("reject-publish")),
    )
    .await;
    declare(&ch, "roomy", FieldTable::default()).await;
    for q in ["full", "roomy"] {
        within(ch.queue_bind(
            q.into(),
            "fan".into(),
            "".into(),
            Default::default(),
            FieldTable::default(),
        ))
        .await
        .unwrap();
    }
    assert!(confirmed(&ch, "fan", "", "first").await);
    assert!(
        !confirmed(&ch, "fan", "", "second").await,
        "nack: one queue was full"
    );
    assert_eq!(bodies(&ch, "full").await, ["first"]);
    assert_eq!(bodies(&ch, "roomy").await, ["first", "second"]);
}

#[tokio::test]
async fn same_as_rabbitmq_reject_publish_dlx_dead_letters_the_refused_message() {
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    within(ch.confirm_select(Default::default())).await.unwrap();
    dead_letter_target(&ch, "dlx", "dlq").await;
    let mut args = limit("x-max-length", 1, Some("reject-publish-dlx"));
    args.insert("x-dead-letter-exchange".into(), long_str("dlx"));
    declare(&ch, "q", args).await;
    assert!(confirmed(&ch, "", "q", "kept").await);
    assert!(!confirmed(&ch, "", "q", "refused").await);
    assert_eq!(bodies(&ch, "q").await, ["kept"]);
    // Dead letters are routed in the background: wait for it.
    assert_eq!(get_eventually(&ch, "dlq").await.delivery.data, b"refused");
    assert_eq!(bodies(&ch, "dlq").await, Vec::<String>::new());
}

#[tokio::test]
async fn same_as_rabbitmq_drop_head_dead_letters_with_reason_maxlen() {
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    dead_letter_target(&ch, "dlx", "dlq").await;
    let mut args = limit("x-max-length", 1, None);
    args.insert("x-dead-letter-exchange".into(), long_str("dlx"));
    declare(&ch, "q", args).await;
    within(ch.confirm_select(Default::default())).await.unwrap();
    assert!(confirmed(&ch, "", "q", "old").await);
    assert!(confirmed(&ch, "", "q", "new").await);
    let dead = get_eventually(&ch, "dlq").await;
    assert_eq!(dead.delivery.data, b"old");
    let h = dead.delivery.properties.headers().clone().unwrap();
    assert_eq!(
        h.inner().get("x-first-death-reason"),
        Some(&long_str("maxlen"))
    );
}

#[tokio::test]
async fn same_as_rabbitmq_limits_count_ready_messages_only_and_zero_rejects_everything() {
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    within(ch.confirm_select(Default::default())).await.unwrap();
    // Unacked messages do not count: a consumer holding one leaves room for another.
    declare(&ch, "one", limit("x-max-length", 1, Some("reject-publish"))).await;
    let mut consumer = within(ch.basic_consume(
        "one".into(),
        "c".into(),
        Default::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    assert!(confirmed(&ch, "", "one", "held").await);
    let _held = within(consumer.next()).await.unwrap().unwrap();
    // With reject-publish the check comes before delivery: a limit of 0 refuses even with a
    // consumer waiting.
    declare(
        &ch,
        "zero",
        limit("x-max-length", 0, Some("reject-publish")),
    )
    .await;
    let _waiting = within(ch.basic_consume(
        "zero".into(),
        "z".into(),
        BasicConsumeOptions {
            no_ack: true,
            ..Default::default()
        },
        FieldTable::default(),
    ))
    .await
    .unwrap();
    assert!(!confirmed(&ch, "", "zero", "refused").await);
}

#[tokio::test]
async fn same_as_rabbitmq_drop_head_with_zero_still_delivers_to_a_waiting_consumer() {
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    declare(&ch, "zero", limit("x-max-length", 0, None)).await;
    let mut consumer = within(ch.basic_consume(
        "zero".into(),
        "z".into(),
        BasicConsumeOptions {
            no_ack: true,
            ..Default::default()
        },
        FieldTable::default(),
    ))
    .await
    .unwrap();
    within(ch.basic_publish(
        "".into(),
        "zero".into(),
        Default::default(),
        b"straight through",
        Default::default(),
    ))
    .await
    .unwrap();
    let d = within(consumer.next()).await.unwrap().unwrap();
    assert_eq!(d.data, b"straight through");
}

#[tokio::test]
async fn same_as_rabbitmq_a_requeue_over_the_limit_drops_the_oldest() {
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    declare(&ch, "q", limit("x-max-length", 2, None)).await;
    within(ch.confirm_select(Default::default())).await.unwrap();
    assert!(confirmed(&ch, "", "q", "first").await);
    let got = within(ch.basic_get("q".into(), Default::default()))
        .await
        .unwrap()
        .unwrap();
    assert!(confirmed(&ch, "", "q", "second").await);
    assert!(confirmed(&ch, "", "q", "third").await);
    // Back goes "first", to the head: three ready, one too many, and the head goes.
    within(got.delivery.nack(BasicNackOptions {
        requeue: true,
        ..Default::default()
    }))
    .await
    .unwrap();
    assert_eq!(bodies(&ch, "q").await, ["second", "third"]);
}

fn quorum_limit(n: i32, overflow: &str) -> FieldTable {
    let mut t = limit("x-max-length", n, Some(overflow));
    t.insert("x-queue-type".into(), long_str("quorum"));
    t
}

async fn declare_durable(ch: &Channel, name: &str, args: FieldTable) {
    let options = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    within(ch.queue_declare(name.into(), options, args))
        .await
        .expect("queue declared");
}

/// Same as RabbitMQ (`rabbit_fifo:evaluate_limit`): a quorum queue with `reject-publish`
/// takes the message that goes over its limit and refuses from the next one, until it is
/// down to 80% of the limit.
#[tokio::test]
async fn same_as_rabbitmq_a_quorum_queue_refuses_after_the_message_that_goes_over() {
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    within(ch.confirm_select(Default::default())).await.unwrap();
    declare_durable(&ch, "qq", quorum_limit(2, "reject-publish")).await;
    let mut acked = Vec::new();
    for body in ["p1", "p2", "p3", "p4"] {
        acked.push(confirmed(&ch, "", "qq", body).await);
    }
    assert_eq!(acked, [true, true, true, false]);
    for _ in 0..2 {
        within(ch.basic_get("qq".into(), BasicGetOptions { no_ack: true }))
            .await
            .unwrap()
            .expect("a message");
    }
    // Down to 1, 80% of 2 truncated: publishes are taken again.
    assert!(confirmed(&ch, "", "qq", "p5").await);
    assert_eq!(bodies(&ch, "qq").await, ["p3", "p5"]);
}

/// Regression: a quorum queue's soft limit was worked out as the limit times four, fifth
/// taken, in 64 bits, so a huge `x-max-length` (any client may declare one up to
/// `i64::MAX`) wrapped it to zero: once the byte limit had been reached, the queue refused
/// every publish until it was empty. Same as RabbitMQ: down to 80% of each limit, it takes
/// publishes again.
#[tokio::test]
async fn a_huge_length_limit_does_not_keep_a_quorum_queue_refusing() {
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    within(ch.confirm_select(Default::default())).await.unwrap();
    let mut args = quorum_limit(0, "reject-publish");
    args.insert("x-max-length".into(), AMQPValue::LongLongInt(1 << 62));
    args.insert("x-max-length-bytes".into(), AMQPValue::LongLongInt(10));
    declare_durable(&ch, "qq", args).await;
    // 5 + 6 bytes goes over 10: the second is taken, and the queue refuses from the next.
    assert!(confirmed(&ch, "", "qq", "12345").await);
    assert!(confirmed(&ch, "", "qq", "123456").await);
    assert!(!confirmed(&ch, "", "qq", "1").await);
    within(ch.basic_get("qq".into(), BasicGetOptions { no_ack: true }))
        .await
        .unwrap()
        .expect("a message");
    // 6 bytes left, below 80% of 10; one message, far below 80% of 2^62.
    assert!(confirmed(&ch, "", "qq", "1").await);
    assert_eq!(bodies(&ch, "qq").await, ["123456", "1"]);
}

/// Same as RabbitMQ 3.10, where quorum queues do not support `reject-publish-dlx`: they
/// drop from the head (dead-lettering with reason `maxlen`) and confirm every publish.
#[tokio::test]
async fn same_as_rabbitmq_a_quorum_queue_with_reject_publish_dlx_drops_from_the_head() {
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    within(ch.confirm_select(Default::default())).await.unwrap();
    dead_letter_target(&ch, "dlx", "dlq").await;
    let mut args = quorum_limit(2, "reject-publish-dlx");
    args.insert("x-dead-letter-exchange".into(), long_str("dlx"));
    declare_durable(&ch, "qq", args).await;
    for body in ["first", "second", "third"] {
        assert!(confirmed(&ch, "", "qq", body).await);
    }
    assert_eq!(bodies(&ch, "qq").await, ["second", "third"]);
    let dead = get_eventually(&ch, "dlq").await;
    assert_eq!(dead.delivery.data, b"first");
}
