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

async fn bodies(ch: &Channel, queue: &str) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(m) = within(ch.basic_get(queue.into(), BasicGetOptions { no_ack: true }))
        .await
        .unwrap()
    {
        out.push(String::from_utf8_lossy(&m.delivery.data).into_owned());
    }
    out
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
