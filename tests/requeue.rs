//! Where a requeued message goes. Same as RabbitMQ 3.10.8 (checked with pika against a local
//! `rabbitmq-server`): a classic queue puts it back in its place; a quorum queue puts what
//! its consumer turned down (`basic.nack` or `basic.reject` with requeue, `basic.recover`)
//! behind every ready message, in the order it came back, unless it has a delivery limit,
//! but what a closing channel let go back in its place. The back stays the back across a restart and past a paged-out backlog.

mod common;

use common::http::Api;
use common::*;
use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel};

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

fn quorum() -> FieldTable {
    table(&[("x-queue-type", long_str("quorum"))])
}

/// A fresh queue `name` of `kind` ("quorum", "classic", or "quorum-limited": a quorum
/// queue with a delivery limit) holding m1..m5.
async fn fresh(ch: &Channel, name: &str, kind: &str) {
    within(ch.queue_delete(name.into(), Default::default()))
        .await
        .unwrap();
    let args = match kind {
        "quorum-limited" => table(&[
            ("x-queue-type", long_str("quorum")),
            ("x-delivery-limit", lapin::types::AMQPValue::LongInt(5)),
        ]),
        _ => table(&[("x-queue-type", long_str(kind))]),
    };
    within(ch.queue_declare(name.into(), durable(), args))
        .await
        .unwrap();
    for i in 1..=5 {
        publish(ch, name, &format!("m{i}"), true).await;
    }
}

async fn publish(ch: &Channel, queue: &str, body: &str, persistent: bool) {
    let props = BasicProperties::default().with_delivery_mode(if persistent { 2 } else { 1 });
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

async fn get(ch: &Channel, queue: &str) -> lapin::message::BasicGetMessage {
    within(ch.basic_get(queue.into(), Default::default()))
        .await
        .unwrap()
        .expect("a message")
}

/// Every message of `queue`, taken with no-ack: its body, with `*` if redelivered.
async fn drain(ch: &Channel, queue: &str) -> String {
    drain_marked(ch, queue, false).await
}

/// As [`drain`], with `#n` after a message whose `x-delivery-count` header is `n` > 0 (a
/// quorum queue's `basic.get` shows the header, 0 included).
async fn drain_counted(ch: &Channel, queue: &str) -> String {
    drain_marked(ch, queue, true).await
}

async fn drain_marked(ch: &Channel, queue: &str, counted: bool) -> String {
    let mut out = Vec::new();
    while let Some(m) = within(ch.basic_get(queue.into(), BasicGetOptions { no_ack: true }))
        .await
        .unwrap()
    {
        let star = if m.delivery.redelivered { "*" } else { "" };
        let count = m
            .delivery
            .properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get("x-delivery-count").cloned())
            .and_then(|n| n.as_long_long_int())
            .filter(|&n| counted && n > 0)
            .map(|n| format!("#{n}"))
            .unwrap_or_default();
        out.push(format!(
            "{}{star}{count}",
            String::from_utf8_lossy(&m.delivery.data)
        ));
    }
    out.join(" ")
}

fn requeue() -> BasicNackOptions {
    BasicNackOptions {
        requeue: true,
        multiple: false,
    }
}

/// What each way of giving messages back leaves in a queue of `kind`, as `drain` shows it.
async fn orders(ch: &Channel, conn: &lapin::Connection, kind: &str) -> Vec<String> {
    let q = "order";
    let mut seen = Vec::new();
    fresh(ch, q, kind).await;
    within(get(ch, q).await.delivery.nack(requeue()))
        .await
        .unwrap();
    seen.push(drain(ch, q).await);

    fresh(ch, q, kind).await;
    let m1 = get(ch, q).await;
    within(m1.delivery.reject(BasicRejectOptions { requeue: true }))
        .await
        .unwrap();
    seen.push(drain(ch, q).await);

    fresh(ch, q, kind).await;
    let _m1 = get(ch, q).await;
    let m2 = get(ch, q).await;
    within(m2.delivery.nack(BasicNackOptions {
        requeue: true,
        multiple: true,
    }))
    .await
    .unwrap();
    seen.push(drain(ch, q).await);

    fresh(ch, q, kind).await;
    let m1 = get(ch, q).await;
    let m2 = get(ch, q).await;
    within(m2.delivery.nack(requeue())).await.unwrap();
    within(m1.delivery.nack(requeue())).await.unwrap();
    seen.push(drain(ch, q).await);

    fresh(ch, q, kind).await;
    let _m1 = get(ch, q).await;
    within(ch.basic_recover(BasicRecoverOptions { requeue: true }))
        .await
        .unwrap();
    seen.push(drain(ch, q).await);

    fresh(ch, q, kind).await;
    let other = within(conn.create_channel()).await.unwrap();
    let _m1 = get(&other, q).await;
    within(other.close(200, "bye".into())).await.unwrap();
    seen.push(drain(ch, q).await);
    seen
}

#[tokio::test]
async fn same_as_rabbitmq_a_quorum_queue_puts_what_its_consumer_refused_at_the_back() {
    let broker = Broker::start().await;
    let (conn, ch) = broker.channel().await;
    assert_eq!(
        orders(&ch, &conn, "quorum").await,
        [
            // basic.nack with requeue
            "m2 m3 m4 m5 m1*",
            // basic.reject with requeue
            "m2 m3 m4 m5 m1*",
            // nack of m1 and m2 with multiple: in the order they came back
            "m3 m4 m5 m1* m2*",
            // m2 nacked, then m1
            "m3 m4 m5 m2* m1*",
            // basic.recover
            "m2 m3 m4 m5 m1*",
            // the channel holding m1 closed: back in its place
            "m1* m2 m3 m4 m5",
        ]
    );
}

/// Same as RabbitMQ 3.10 (checked on a node): with a delivery limit a quorum queue keeps
/// what came back as returns, served before its ready messages, so a refused message is
/// redelivered next. Before, it went to the back as without a limit. (RabbitMQ serves
/// several returns in the order they came back; Lepus in their places: the fourth case is
/// `m2* m1*` there, see DIFFERENCES.md.)
#[tokio::test]
async fn same_as_rabbitmq_a_quorum_queue_with_a_delivery_limit_redelivers_what_was_refused_first() {
    let broker = Broker::start().await;
    let (conn, ch) = broker.channel().await;
    assert_eq!(
        orders(&ch, &conn, "quorum-limited").await,
        [
            "m1* m2 m3 m4 m5",
            "m1* m2 m3 m4 m5",
            "m1* m2* m3 m4 m5",
            "m1* m2* m3 m4 m5",
            "m1* m2 m3 m4 m5",
            "m1* m2 m3 m4 m5",
        ]
    );
}

#[tokio::test]
async fn same_as_rabbitmq_a_classic_queue_puts_requeued_messages_back_in_their_places() {
    let broker = Broker::start().await;
    let (conn, ch) = broker.channel().await;
    let orders = orders(&ch, &conn, "classic").await;
    let expected = [
        "m1* m2 m3 m4 m5",
        "m1* m2 m3 m4 m5",
        "m1* m2* m3 m4 m5",
        "m1* m2* m3 m4 m5",
        "m1* m2 m3 m4 m5",
        "m1* m2 m3 m4 m5",
    ];
    assert_eq!(orders, expected);
}

/// Same as RabbitMQ: deliveries let go by closing channels go back to their places however
/// they interleave. Two consumers sharing a queue round-robin hold every other message; the
/// second channel's are merged in between the first's (in one pass: placed one at a time,
/// each shifted half the queue, 100,000 of them took billions of moves under its lock).
#[tokio::test]
async fn same_as_rabbitmq_interleaved_deliveries_go_back_in_order_when_their_channels_close() {
    let broker = Broker::start().await;
    let (conn, ch) = broker.channel().await;
    within(ch.queue_declare("shared".into(), Default::default(), FieldTable::default()))
        .await
        .unwrap();
    let mut holders = Vec::new();
    for tag in ["a", "b"] {
        let c = within(conn.create_channel()).await.unwrap();
        let consumer = within(c.basic_consume(
            "shared".into(),
            tag.into(),
            Default::default(),
            FieldTable::default(),
        ))
        .await
        .unwrap();
        holders.push((c, consumer));
    }
    let sent: Vec<String> = (0..60).map(|n| format!("m{n:02}")).collect();
    for body in &sent {
        within(ch.basic_publish(
            "".into(),
            "shared".into(),
            Default::default(),
            body.as_bytes(),
            BasicProperties::default(),
        ))
        .await
        .unwrap();
    }
    for (_, consumer) in holders.iter_mut() {
        for _ in 0..30 {
            within(consumer.next()).await.unwrap().unwrap();
        }
    }
    for (c, _) in holders {
        within(c.close(200, "bye".into())).await.unwrap();
    }
    let mut back = Vec::new();
    while let Some(m) = within(ch.basic_get("shared".into(), BasicGetOptions { no_ack: true }))
        .await
        .unwrap()
    {
        assert!(m.delivery.redelivered);
        back.push(String::from_utf8_lossy(&m.delivery.data).into_owned());
    }
    assert_eq!(back, sent);
}

/// A consumer that keeps refusing one message does not hold up the rest: with prefetch 1 it
/// gets every other message before the refused one comes round again.
#[tokio::test]
async fn same_as_rabbitmq_a_refused_message_does_not_block_a_quorum_queues_consumer() {
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    fresh(&ch, "work", "quorum").await;
    within(ch.basic_qos(1, Default::default())).await.unwrap();
    let mut consumer = within(ch.basic_consume(
        "work".into(),
        "c".into(),
        Default::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    let mut seen = Vec::new();
    for n in 0..6 {
        let d = within(consumer.next()).await.unwrap().unwrap();
        seen.push(String::from_utf8_lossy(&d.data).into_owned());
        if n == 0 {
            within(d.nack(requeue())).await.unwrap();
        } else {
            within(d.ack(Default::default())).await.unwrap();
        }
    }
    assert_eq!(seen, ["m1", "m2", "m3", "m4", "m5", "m1"]);
}

/// The refused message's new place is logged: a restart finds it at the back, once, and
/// still redelivered, with its delivery count (as RabbitMQ's quorum queue, whose count is
/// in its log).
#[tokio::test]
async fn a_quorum_queues_refused_message_stays_at_the_back_across_a_restart() {
    let dir = temp_dir("requeue");
    let mut config = Config::for_tests();
    config.data_dir = dir.clone();
    let mut broker = Broker::start_with(config.clone()).await;
    let (conn, ch) = broker.channel().await;
    fresh(&ch, "qq", "quorum").await;
    // A transient message too: as in RabbitMQ, a quorum queue logs every message whatever
    // its delivery mode, so it comes back after the restart. (Lepus used to keep it in
    // memory only, and confirm it before any disk saw it.)
    publish(&ch, "qq", "transient", false).await;
    within(get(&ch, "qq").await.delivery.nack(requeue()))
        .await
        .unwrap();
    // A confirmed publish to the same queue after the nack: once it is confirmed, the
    // records the nack logged before it are on disk too.
    within(ch.confirm_select(Default::default())).await.unwrap();
    let confirm = within(ch.basic_publish(
        "".into(),
        "qq".into(),
        Default::default(),
        b"m6",
        BasicProperties::default().with_delivery_mode(2),
    ))
    .await
    .unwrap();
    assert!(within(confirm).await.unwrap().is_ack());
    drop(ch);
    drop(conn);
    broker.stop().await;

    let broker = Broker::start_with(config).await;
    let (_c, ch) = broker.channel().await;
    assert_eq!(
        drain_counted(&ch, "qq").await,
        "m2 m3 m4 m5 transient m1*#1 m6"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Behind a backlog paged out to disk, a refused message goes after the last paged message,
/// persistent or not.
#[tokio::test]
async fn a_refused_message_goes_behind_a_quorum_queues_paged_out_backlog() {
    let mut config = Config::for_tests();
    config.limits.memory_budget_bytes = 256 * 1024;
    config.management_listen = Some("127.0.0.1:0".parse().unwrap());
    let broker = Broker::start_with(config).await;
    let addr = broker.server.as_ref().and_then(|s| s.management_addr());
    let api = Api::new(addr.expect("management listener"), "guest", "guest");
    let (_c, ch) = broker.channel().await;
    within(ch.queue_declare("big".into(), durable(), quorum()))
        .await
        .unwrap();
    let filler = "x".repeat(32 * 1024);
    for (i, persistent) in [true, false].into_iter().enumerate() {
        // Two heads refused in turn: one persistent, one transient.
        publish(&ch, "big", &format!("head{i}"), persistent).await;
    }
    for i in 0..60 {
        publish(&ch, "big", &format!("{i:02}{filler}"), i % 2 == 0).await;
    }
    let paged = within(async {
        loop {
            let q = api.get("/api/queues/%2F/big").await.json();
            // A quorum queue shows no `messages_paged_out` (as in RabbitMQ): what is not
            // in memory is paged out.
            let in_memory = q["messages_ram"].as_u64().unwrap_or(u64::MAX);
            if in_memory < 62 && q["messages"].as_u64() == Some(62) {
                return 62 - in_memory;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(paged > 0);
    for _ in 0..2 {
        within(get(&ch, "big").await.delivery.nack(requeue()))
            .await
            .unwrap();
    }
    let order = drain(&ch, "big").await;
    let short: Vec<&str> = order
        .split(' ')
        .map(|m| m.get(..2).filter(|_| !m.starts_with("head")).unwrap_or(m))
        .collect();
    let mut expected: Vec<String> = (0..60).map(|i| format!("{i:02}")).collect();
    expected.extend(["head0*".to_string(), "head1*".to_string()]);
    assert_eq!(short, expected);
}

/// Regression: a quorum queue's message that was paged out and read back had forgotten how
/// often it came back (the paging record had no field for it), so its `x-delivery-count`,
/// and its delivery limit, started again from 0.
#[tokio::test]
async fn a_quorum_queue_message_keeps_its_delivery_count_when_paged_out() {
    let mut config = Config::for_tests();
    config.limits.memory_budget_bytes = 256 * 1024;
    let broker = Broker::start_with(config).await;
    let (_c, ch) = broker.channel().await;
    within(ch.queue_declare("counted".into(), durable(), quorum()))
        .await
        .unwrap();
    let filler = "x".repeat(32 * 1024);
    publish(&ch, "counted", "transient", false).await;
    publish(&ch, "counted", "persistent", true).await;
    for i in 0..20 {
        publish(&ch, "counted", &format!("{i:02}{filler}"), i % 2 == 0).await;
    }
    // Refused once each: both go to the back, past the part of the queue a paging queue
    // keeps in memory, with a delivery count of 1.
    for _ in 0..2 {
        within(get(&ch, "counted").await.delivery.nack(requeue()))
            .await
            .unwrap();
    }
    // Past a megabyte over the memory budget, the queue pages the newest part out.
    for i in 20..60 {
        publish(&ch, "counted", &format!("{i:02}{filler}"), i % 2 == 0).await;
    }
    let order = drain_counted(&ch, "counted").await;
    let short: Vec<&str> = order
        .split(' ')
        .map(|m| m.get(..2).filter(|_| m.len() > 1024).unwrap_or(m))
        .collect();
    let mut expected: Vec<String> = (0..20).map(|i| format!("{i:02}")).collect();
    expected.extend(["transient*#1".to_string(), "persistent*#1".to_string()]);
    expected.extend((20..60).map(|i| format!("{i:02}")));
    assert_eq!(short, expected);
}

/// Same as RabbitMQ 3.10.8 (checked with pika): a quorum queue counts a message given back
/// in its place, by a closing channel or after a cancelled consumer, and a restart brings
/// it back with that count, as its Raft log does.
#[tokio::test]
async fn same_as_rabbitmq_a_count_from_returns_in_place_survives_a_restart() {
    let dir = temp_dir("requeue");
    let mut config = Config::for_tests();
    config.data_dir = dir.clone();
    let mut broker = Broker::start_with(config.clone()).await;
    let conn = broker.connect().await;
    let ch = within(conn.create_channel()).await.unwrap();
    within(ch.queue_declare("in-place".into(), durable(), quorum()))
        .await
        .unwrap();
    publish(&ch, "in-place", "m1", true).await;
    publish(&ch, "in-place", "m2", true).await;
    let mut counts = Vec::new();
    for _ in 0..2 {
        let other = within(conn.create_channel()).await.unwrap();
        counts.push(delivery_count(&get(&other, "in-place").await.delivery));
        within(other.close(200, "bye".into())).await.unwrap();
    }
    let other = within(conn.create_channel()).await.unwrap();
    within(other.basic_qos(1, Default::default()))
        .await
        .unwrap();
    let mut consumer = within(other.basic_consume(
        "in-place".into(),
        "c".into(),
        Default::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    let d = within(consumer.next()).await.unwrap().unwrap();
    counts.push(delivery_count(&d));
    within(other.basic_cancel("c".into(), Default::default()))
        .await
        .unwrap();
    within(other.close(200, "bye".into())).await.unwrap();
    let other = within(conn.create_channel()).await.unwrap();
    counts.push(delivery_count(&get(&other, "in-place").await.delivery));
    within(other.close(200, "bye".into())).await.unwrap();
    assert_eq!(counts, [0, 1, 2, 3]);
    drop(ch);
    drop(conn);
    broker.stop().await;

    let broker = Broker::start_with(config).await;
    let (_c, ch) = broker.channel().await;
    assert_eq!(drain_counted(&ch, "in-place").await, "m1*#4 m2");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The `x-delivery-count` header of a quorum queue's delivery.
fn delivery_count(d: &lapin::message::Delivery) -> i64 {
    d.properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-delivery-count").cloned())
        .and_then(|n| n.as_long_long_int())
        .expect("an x-delivery-count header")
}
