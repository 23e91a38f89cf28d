//! Priority queues (`x-max-priority`), as RabbitMQ 3.10 orders them.

mod common;

use amq_protocol::types::{AMQPValue, FieldTable};
use common::*;
use lapin::options::*;
use lapin::{BasicProperties, Channel};

async fn publish(ch: &Channel, queue: &str, body: &str, priority: Option<u8>) {
    let props = match priority {
        Some(p) => BasicProperties::default().with_priority(p),
        None => BasicProperties::default(),
    };
    within(ch.basic_publish(
        "".into(),
        queue.into(),
        Default::default(),
        body.as_bytes(),
        props,
    ))
    .await
    .unwrap();
}

#[tokio::test]
async fn same_as_rabbitmq_higher_priorities_first_capped_at_the_maximum_fifo_within() {
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    within(ch.queue_declare(
        "pq".into(),
        Default::default(),
        table(&[("x-max-priority", AMQPValue::ShortShortInt(5))]),
    ))
    .await
    .unwrap();
    for (body, p) in [
        ("p5", Some(5)),
        ("p9", Some(9)),
        ("p255", Some(255)),
        ("p3", Some(3)),
        ("p1", Some(1)),
        ("none", None),
        ("p0", Some(0)),
        ("none2", None),
    ] {
        publish(&ch, "pq", body, p).await;
    }
    // What RabbitMQ 3.10.8 delivers for the same publishes.
    assert_eq!(
        bodies(&ch, "pq").await,
        ["p5", "p9", "p255", "p3", "p1", "none", "p0", "none2"]
    );
}

#[tokio::test]
async fn same_as_rabbitmq_a_requeued_message_goes_back_to_its_own_level() {
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    within(ch.queue_declare(
        "pq".into(),
        Default::default(),
        table(&[("x-max-priority", AMQPValue::ShortShortInt(9))]),
    ))
    .await
    .unwrap();
    publish(&ch, "pq", "low-1", Some(1)).await;
    publish(&ch, "pq", "low-2", Some(1)).await;
    let got = within(ch.basic_get("pq".into(), Default::default()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.delivery.data, b"low-1");
    publish(&ch, "pq", "high", Some(8)).await;
    within(got.delivery.nack(BasicNackOptions {
        requeue: true,
        ..Default::default()
    }))
    .await
    .unwrap();
    assert_eq!(bodies(&ch, "pq").await, ["high", "low-1", "low-2"]);
}

#[tokio::test]
async fn same_as_rabbitmq_a_queue_without_max_priority_ignores_priorities() {
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    within(ch.queue_declare("plain".into(), Default::default(), FieldTable::default()))
        .await
        .unwrap();
    publish(&ch, "plain", "a", Some(1)).await;
    publish(&ch, "plain", "b", Some(9)).await;
    assert_eq!(bodies(&ch, "plain").await, ["a", "b"]);
}

#[tokio::test]
async fn same_as_rabbitmq_max_priority_zero_is_fifo() {
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    within(ch.queue_declare(
        "zero".into(),
        Default::default(),
        table(&[("x-max-priority", AMQPValue::ShortShortInt(0))]),
    ))
    .await
    .unwrap();
    publish(&ch, "zero", "a", Some(3)).await;
    publish(&ch, "zero", "b", Some(7)).await;
    assert_eq!(bodies(&ch, "zero").await, ["a", "b"]);
}

/// Publishes `n` 1 KB messages cycling through priorities 0..=4, confirmed; body starts with
/// the message's number.
async fn fill_priorities(ch: &Channel, queue: &str, n: u64, persistent: bool) {
    within(ch.confirm_select(Default::default())).await.unwrap();
    let mut pending = Vec::new();
    for i in 0..n {
        let mut body = vec![b'x'; 1000];
        body[..8].copy_from_slice(&i.to_be_bytes());
        let mut props = BasicProperties::default().with_priority((i % 5) as u8);
        if persistent {
            props = props.with_delivery_mode(2);
        }
        pending.push(
            within(ch.basic_publish("".into(), queue.into(), Default::default(), &body, props))
                .await
                .unwrap(),
        );
    }
    for p in pending {
        assert!(within(p).await.unwrap().is_ack());
    }
}

/// What a consumer must see: priority 4 first, then 3, ..., each level in publish order.
fn priority_order(n: u64) -> Vec<u64> {
    (0..5u64)
        .rev()
        .flat_map(|p| (0..n).filter(move |i| i % 5 == p))
        .collect()
}

async fn numbers(ch: &Channel, queue: &str) -> Vec<u64> {
    let mut out = Vec::new();
    while let Some(m) = within(ch.basic_get(queue.into(), BasicGetOptions { no_ack: true }))
        .await
        .unwrap()
    {
        out.push(u64::from_be_bytes(m.delivery.data[..8].try_into().unwrap()));
    }
    out
}

/// Priority queues used to keep every message in memory (and to read a durable one whole at
/// start-up). Their levels now page like FIFO queues, lowest priorities first: 5 MB of
/// messages under a 256 KiB budget hold a few megabytes at most, and still come out in
/// priority order, FIFO within each level.
#[tokio::test]
async fn a_priority_backlog_pages_by_level_and_comes_back_in_priority_order() {
    let mut config = Config::for_tests();
    config.limits.memory_budget_bytes = 256 * 1024;
    let broker = Broker::start_with(config).await;
    let (_c, ch) = broker.channel().await;
    within(ch.queue_declare(
        "pq-big".into(),
        Default::default(),
        table(&[("x-max-priority", AMQPValue::ShortShortInt(4))]),
    ))
    .await
    .unwrap();
    let n = 5000;
    fill_priorities(&ch, "pq-big", n, false).await;
    let memory = broker.server.as_ref().unwrap().broker().memory.used();
    assert!(
        memory < 4 * 1024 * 1024,
        "5 MB of messages, {memory} bytes of them in memory"
    );
    let q_count = message_count(&ch, "pq-big").await;
    assert_eq!(u64::from(q_count), n);
    assert_eq!(numbers(&ch, "pq-big").await, priority_order(n));
}

#[tokio::test]
async fn a_durable_priority_backlog_recovers_without_reading_it_all_into_memory() {
    let dir = temp_dir("priorities");
    let config = || {
        let mut config = Config::for_tests();
        config.data_dir = dir.clone();
        config.limits.memory_budget_bytes = 256 * 1024;
        config
    };
    let n = 5000;
    {
        let mut broker = Broker::start_with(config()).await;
        let (_c, ch) = broker.channel().await;
        within(ch.queue_declare(
            "pq-durable".into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            table(&[("x-max-priority", AMQPValue::ShortShortInt(4))]),
        ))
        .await
        .unwrap();
        fill_priorities(&ch, "pq-durable", n, true).await;
        broker.stop().await;
    }
    let broker = Broker::start_with(config()).await;
    let memory = broker.server.as_ref().unwrap().broker().memory.used();
    assert!(
        memory < 4 * 1024 * 1024,
        "5 MB recovered, {memory} bytes of them in memory"
    );
    let (_c, ch) = broker.channel().await;
    assert_eq!(numbers(&ch, "pq-durable").await, priority_order(n));
    let _ = std::fs::remove_dir_all(&dir);
}
