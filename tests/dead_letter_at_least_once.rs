//! At-least-once dead-lettering. Same as RabbitMQ 3.10.8 (checked with pika against a local
//! `rabbitmq-server`): a quorum queue with `x-dead-letter-strategy: at-least-once`,
//! `x-overflow: reject-publish` and a dead-letter exchange keeps each dead letter until the
//! queues it is routed to have it. Held letters count among the queue's `messages` and
//! against its length limit, show as `messages_dlx`, survive a purge, and are routed again
//! after the retry interval or at once when a policy changes. With `drop-head` the strategy
//! falls back to at most once; turning it off drops what is held.

mod common;

use common::http::Api;
use common::*;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, ExchangeKind};
use serde_json::{Value, json};

/// A broker with the management API, routing held dead letters again after `retry_ms`.
async fn broker(retry_ms: u64) -> (Broker, Api) {
    let mut config = Config::for_tests();
    config.management_listen = Some("127.0.0.1:0".parse().unwrap());
    config.limits.dead_letter_retry_ms = retry_ms;
    let broker = Broker::start_with(config).await;
    let api = api_of(&broker);
    (broker, api)
}

/// The management API of `broker`.
fn api_of(broker: &Broker) -> Api {
    let addr = broker.server.as_ref().and_then(|s| s.management_addr());
    Api::new(addr.expect("management listener"), "guest", "guest")
}

/// A data directory of its own and a configuration to start a broker on it, again and
/// again, with the management API. Held letters wait RabbitMQ's 3 minutes before a retry:
/// only a restart routes them again within a test.
fn restartable(name: &str) -> (std::path::PathBuf, Config) {
    let dir = temp_dir(name);
    let mut config = Config::for_tests();
    config.data_dir = dir.clone();
    config.management_listen = Some("127.0.0.1:0".parse().unwrap());
    config.limits.dead_letter_retry_ms = 180_000;
    (dir, config)
}

/// Quorum-queue arguments for at-least-once dead-lettering to `dlx`, with `more`.
fn at_least_once(dlx: &str, more: &[(&str, lapin::types::AMQPValue)]) -> FieldTable {
    let mut args = table(&[
        ("x-queue-type", long_str("quorum")),
        ("x-dead-letter-exchange", long_str(dlx)),
        ("x-dead-letter-strategy", long_str("at-least-once")),
        ("x-overflow", long_str("reject-publish")),
    ]);
    for (k, v) in more {
        args.insert((*k).into(), v.clone());
    }
    args
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

/// A direct reply-to consumer on `requester`, and the reply name the broker gave it (learnt
/// as a responder does, from a request sent through `rpc_queue`).
async fn reply_consumer(
    requester: &Channel,
    responder: &Channel,
    rpc_queue: &str,
) -> (lapin::Consumer, String) {
    let replies = within(requester.basic_consume(
        "amq.rabbitmq.reply-to".into(),
        "replies".into(),
        BasicConsumeOptions {
            no_ack: true,
            ..Default::default()
        },
        FieldTable::default(),
    ))
    .await
    .unwrap();
    within(responder.queue_declare(rpc_queue.into(), Default::default(), FieldTable::default()))
        .await
        .unwrap();
    within(requester.basic_publish(
        "".into(),
        rpc_queue.into(),
        Default::default(),
        b"request",
        BasicProperties::default().with_reply_to("amq.rabbitmq.reply-to".into()),
    ))
    .await
    .unwrap();
    let request = within(responder.basic_get(rpc_queue.into(), BasicGetOptions { no_ack: true }))
        .await
        .unwrap()
        .expect("the request arrived");
    let reply_to = request.delivery.properties.reply_to().clone().unwrap();
    (replies, reply_to.to_string())
}

/// Publishes `body` persistently on a channel in confirm mode; true if it was confirmed.
async fn publish(ch: &Channel, queue: &str, body: &str) -> bool {
    let confirm = within(ch.basic_publish(
        "".into(),
        queue.into(),
        Default::default(),
        body.as_bytes(),
        BasicProperties::default().with_delivery_mode(2),
    ))
    .await
    .unwrap();
    within(confirm).await.unwrap().is_ack()
}

/// Takes the next message of `queue` and rejects it without requeueing.
async fn reject_next(ch: &Channel, queue: &str) {
    let m = within(ch.basic_get(queue.into(), Default::default()))
        .await
        .unwrap()
        .expect("a message");
    within(m.delivery.reject(BasicRejectOptions { requeue: false }))
        .await
        .unwrap();
}

/// Waits until the queue's `messages`, `messages_ready` and `messages_dlx` are `want`.
async fn wait_counts(api: &Api, queue: &str, want: (u64, u64, u64)) -> Value {
    within(async {
        loop {
            let q = api.get(&format!("/api/queues/%2F/{queue}")).await.json();
            let got = (
                q["messages"].as_u64(),
                q["messages_ready"].as_u64(),
                q["messages_dlx"].as_u64(),
            );
            if got == (Some(want.0), Some(want.1), Some(want.2)) {
                return q;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await
}

/// A durable fanout exchange bound to the durable `queues`, declared with their arguments.
async fn fanout_to(ch: &Channel, exchange: &str, queues: &[(&str, FieldTable)]) {
    within(ch.exchange_declare(
        exchange.into(),
        ExchangeKind::Fanout,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    ))
    .await
    .unwrap();
    for (queue, args) in queues {
        within(ch.queue_declare((*queue).into(), durable(), args.clone()))
            .await
            .unwrap();
        within(ch.queue_bind(
            (*queue).into(),
            exchange.into(),
            "".into(),
            Default::default(),
            FieldTable::default(),
        ))
        .await
        .unwrap();
    }
}

#[tokio::test]
async fn same_as_rabbitmq_a_dead_letter_waits_in_its_quorum_queue_until_a_queue_takes_it() {
    // The retry interval is RabbitMQ's 3 minutes: only the policy change routes them again.
    let (broker, api) = broker(180_000).await;
    let (_c, ch) = broker.channel().await;
    within(ch.confirm_select(Default::default())).await.unwrap();
    let args = at_least_once(
        "alo-dlx",
        &[("x-max-length", lapin::types::AMQPValue::LongInt(3))],
    );
    within(ch.queue_declare("alo-src".into(), durable(), args))
        .await
        .unwrap();
    for body in ["m1", "m2", "m3"] {
        assert!(publish(&ch, "alo-src", body).await);
    }
    // The dead-letter exchange does not exist: both rejected messages stay.
    reject_next(&ch, "alo-src").await;
    reject_next(&ch, "alo-src").await;
    let q = wait_counts(&api, "alo-src", (3, 1, 2)).await;
    assert_eq!(q["message_bytes_dlx"], 4);
    assert_eq!(q["message_bytes"], 6);
    // They count against the length limit: as for any quorum queue, the publish that goes
    // over is taken and the next refused.
    assert!(publish(&ch, "alo-src", "m4").await);
    assert!(!publish(&ch, "alo-src", "m5").await);
    // A purge takes the ready messages only.
    let purged = within(ch.queue_purge("alo-src".into(), Default::default()))
        .await
        .unwrap();
    assert_eq!(purged, 2);
    wait_counts(&api, "alo-src", (2, 0, 2)).await;
    // A queue to take them, then a policy change: they are routed again at once.
    fanout_to(&ch, "alo-dlx", &[("alo-target", FieldTable::default())]).await;
    let policy =
        json!({"pattern": "^alo-src$", "definition": {"max-length": 100}, "apply-to": "queues"});
    assert_eq!(api.put("/api/policies/%2F/alo", policy).await.status, 201);
    wait_counts(&api, "alo-src", (0, 0, 0)).await;
    let first = get_eventually(&ch, "alo-target").await;
    assert_eq!(&first.delivery.data[..], b"m1");
    let headers = first
        .delivery
        .properties
        .headers()
        .clone()
        .unwrap_or_default();
    assert!(headers.inner().contains_key("x-death"));
    assert_eq!(bodies(&ch, "alo-target").await, ["m2"]);
}

#[tokio::test]
async fn a_held_dead_letter_is_routed_again_when_its_retry_is_due() {
    let (broker, api) = broker(100).await;
    let (_c, ch) = broker.channel().await;
    within(ch.confirm_select(Default::default())).await.unwrap();
    within(ch.queue_declare(
        "retry-src".into(),
        durable(),
        at_least_once("retry-dlx", &[]),
    ))
    .await
    .unwrap();
    assert!(publish(&ch, "retry-src", "late").await);
    reject_next(&ch, "retry-src").await;
    wait_counts(&api, "retry-src", (1, 0, 1)).await;
    // The exchange and a durable queue appear; the next retry finds them, and the letter
    // leaves its queue once the target has logged it.
    fanout_to(&ch, "retry-dlx", &[("retry-target", FieldTable::default())]).await;
    let m = get_eventually(&ch, "retry-target").await;
    assert_eq!(&m.delivery.data[..], b"late");
    wait_counts(&api, "retry-src", (0, 0, 0)).await;
}

#[tokio::test]
async fn a_retry_goes_only_to_the_queues_that_refused_the_dead_letter() {
    let (broker, api) = broker(100).await;
    let (_c, ch) = broker.channel().await;
    within(ch.confirm_select(Default::default())).await.unwrap();
    let full = table(&[
        ("x-max-length", lapin::types::AMQPValue::LongInt(1)),
        ("x-overflow", long_str("reject-publish")),
    ]);
    fanout_to(
        &ch,
        "split-dlx",
        &[("split-open", FieldTable::default()), ("split-full", full)],
    )
    .await;
    assert!(publish(&ch, "split-full", "filler").await);
    within(ch.queue_declare(
        "split-src".into(),
        durable(),
        at_least_once("split-dlx", &[]),
    ))
    .await
    .unwrap();
    assert!(publish(&ch, "split-src", "dead").await);
    reject_next(&ch, "split-src").await;
    // One queue took it, the full one refused it: it stays held.
    assert_eq!(
        &get_eventually(&ch, "split-open").await.delivery.data[..],
        b"dead"
    );
    wait_counts(&api, "split-src", (1, 0, 1)).await;
    // Room in the full queue: a retry delivers it there, and not again to the other.
    assert_eq!(bodies(&ch, "split-full").await, ["filler"]);
    assert_eq!(
        &get_eventually(&ch, "split-full").await.delivery.data[..],
        b"dead"
    );
    wait_counts(&api, "split-src", (0, 0, 0)).await;
    assert!(bodies(&ch, "split-open").await.is_empty());
}

#[tokio::test]
async fn same_as_rabbitmq_at_least_once_needs_reject_publish_and_turning_it_off_drops_what_is_held()
{
    let (broker, api) = broker(180_000).await;
    let (_c, ch) = broker.channel().await;
    within(ch.confirm_select(Default::default())).await.unwrap();
    // With drop-head (the default overflow) it falls back to at most once.
    let mut args = at_least_once("nowhere", &[]);
    args.insert("x-overflow".into(), long_str("drop-head"));
    within(ch.queue_declare("alo-drop-head".into(), durable(), args))
        .await
        .unwrap();
    assert!(publish(&ch, "alo-drop-head", "gone").await);
    reject_next(&ch, "alo-drop-head").await;
    wait_counts(&api, "alo-drop-head", (0, 0, 0)).await;
    // Strategy by policy: held while it is at-least-once, dropped when it is not.
    let policy = |strategy: &str| {
        json!({"pattern": "^alo-by-policy$", "apply-to": "queues",
               "definition": {"dead-letter-strategy": strategy, "dead-letter-exchange": "nowhere"}})
    };
    api.put("/api/policies/%2F/strategy", policy("at-least-once"))
        .await;
    let args = table(&[
        ("x-queue-type", long_str("quorum")),
        ("x-overflow", long_str("reject-publish")),
    ]);
    within(ch.queue_declare("alo-by-policy".into(), durable(), args))
        .await
        .unwrap();
    assert!(publish(&ch, "alo-by-policy", "held").await);
    reject_next(&ch, "alo-by-policy").await;
    wait_counts(&api, "alo-by-policy", (1, 0, 1)).await;
    api.put("/api/policies/%2F/strategy", policy("at-most-once"))
        .await;
    wait_counts(&api, "alo-by-policy", (0, 0, 0)).await;
}

/// Same as RabbitMQ: a dead letter held when the broker stops is still held after the
/// restart (not back among its queue's ready messages), and is routed again at once to
/// every queue, as RabbitMQ's dead-letter worker does when it starts.
#[tokio::test]
async fn same_as_rabbitmq_a_dead_letter_held_at_a_restart_is_held_after_it_and_routed_again() {
    let (dir, config) = restartable("alo");
    let mut broker = Broker::start_with(config.clone()).await;
    let api = api_of(&broker);
    let (conn, ch) = broker.channel().await;
    within(ch.confirm_select(Default::default())).await.unwrap();
    // One queue's letters go to a full queue, which refuses them; another's exchange does
    // not exist.
    let full = table(&[
        ("x-max-length", lapin::types::AMQPValue::LongInt(1)),
        ("x-overflow", long_str("reject-publish")),
    ]);
    fanout_to(&ch, "alo-restart-dlx", &[("alo-restart-full", full)]).await;
    assert!(publish(&ch, "alo-restart-full", "filler").await);
    for (queue, dlx) in [
        ("alo-restart", "alo-restart-dlx"),
        ("alo-restart-nowhere", "missing"),
    ] {
        within(ch.queue_declare(queue.into(), durable(), at_least_once(dlx, &[])))
            .await
            .unwrap();
        assert!(publish(&ch, queue, "held").await);
        assert!(publish(&ch, queue, "ready").await);
        reject_next(&ch, queue).await;
        wait_counts(&api, queue, (2, 1, 1)).await;
    }
    // Room in the full queue; the letter would wait for its retry, minutes away.
    within(ch.queue_purge("alo-restart-full".into(), Default::default()))
        .await
        .unwrap();
    drop(ch);
    drop(conn);
    broker.stop().await;

    let broker = Broker::start_with(config).await;
    let api = api_of(&broker);
    let (_c, ch) = broker.channel().await;
    // Still held where it cannot go, and not among the ready messages.
    wait_counts(&api, "alo-restart-nowhere", (2, 1, 1)).await;
    assert_eq!(bodies(&ch, "alo-restart-nowhere").await, ["ready"]);
    // Routed again at the start where it can go, with its death recorded.
    let m = get_eventually(&ch, "alo-restart-full").await;
    assert_eq!(&m.delivery.data[..], b"held");
    let headers = m.delivery.properties.headers().clone().unwrap_or_default();
    assert!(headers.inner().contains_key("x-death"));
    wait_counts(&api, "alo-restart", (1, 1, 0)).await;
    assert_eq!(bodies(&ch, "alo-restart").await, ["ready"]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Many held letters routed again at once (a policy change) go a batch at a time, and all
/// of them arrive, once each.
#[tokio::test]
async fn many_held_dead_letters_are_all_routed_again() {
    let (broker, api) = broker(180_000).await;
    let (_c, ch) = broker.channel().await;
    let args = at_least_once(
        "many-dlx",
        &[("x-message-ttl", lapin::types::AMQPValue::LongInt(0))],
    );
    within(ch.queue_declare("many-src".into(), durable(), args))
        .await
        .unwrap();
    // With TTL 0 and no consumer, every message expires at once, into the held letters.
    for i in 0..1000 {
        within(ch.basic_publish(
            "".into(),
            "many-src".into(),
            Default::default(),
            format!("{i}").as_bytes(),
            BasicProperties::default(),
        ))
        .await
        .unwrap();
    }
    wait_counts(&api, "many-src", (1000, 0, 1000)).await;
    fanout_to(&ch, "many-dlx", &[("many-target", FieldTable::default())]).await;
    let policy =
        json!({"pattern": "^many-src$", "definition": {"max-length": 5000}, "apply-to": "queues"});
    api.put("/api/policies/%2F/many", policy).await;
    wait_counts(&api, "many-src", (0, 0, 0)).await;
    // Every one, once. (The order of letters routed again is not kept, as in RabbitMQ: a
    // batch the timer hands over may reach the worker before the one before it.)
    let mut got: Vec<u32> = bodies(&ch, "many-target")
        .await
        .iter()
        .filter_map(|b| b.parse().ok())
        .collect();
    got.sort_unstable();
    assert_eq!(got, (0..1000).collect::<Vec<u32>>());
}

/// Regression (found by review): a TTL-0 message published behind a paged-out backlog was
/// dead-lettered at once, at most once, whatever the strategy. Now it waits behind the
/// backlog and, expiring at the head, is held like any other dead letter.
#[tokio::test]
async fn a_ttl_zero_message_behind_a_paged_backlog_is_held_too() {
    let mut config = Config::for_tests();
    config.limits.memory_budget_bytes = 256 * 1024;
    config.management_listen = Some("127.0.0.1:0".parse().unwrap());
    let broker = Broker::start_with(config).await;
    let api = api_of(&broker);
    let (_c, ch) = broker.channel().await;
    within(ch.queue_declare("alo-paged".into(), durable(), at_least_once("none", &[])))
        .await
        .unwrap();
    let filler = "x".repeat(32 * 1024);
    for _ in 0..60 {
        within(ch.basic_publish(
            "".into(),
            "alo-paged".into(),
            Default::default(),
            filler.as_bytes(),
            BasicProperties::default(),
        ))
        .await
        .unwrap();
    }
    // Wait until part of the backlog is paged out (not in memory).
    within(async {
        loop {
            let q = api.get("/api/queues/%2F/alo-paged").await.json();
            let in_memory = q["messages_ram"].as_u64().unwrap_or(u64::MAX);
            if q["messages"].as_u64() == Some(60) && in_memory < 60 {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    within(ch.basic_publish(
        "".into(),
        "alo-paged".into(),
        Default::default(),
        b"now or never",
        BasicProperties::default().with_expiration("0".into()),
    ))
    .await
    .unwrap();
    assert_eq!(bodies(&ch, "alo-paged").await.len(), 60);
    wait_counts(&api, "alo-paged", (1, 0, 1)).await;
}

/// Segment files of every queue log under `dir`.
fn segment_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir.join("queues"))
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|q| std::fs::read_dir(q.path()).into_iter().flatten().flatten())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect()
}

/// Regression (review): a restart that brought back only held letters left the log's read
/// position at its start, so once they settled no segment of theirs was ever deleted.
#[tokio::test]
async fn the_log_of_letters_held_across_a_restart_is_deleted_once_they_settle() {
    let (dir, mut config) = restartable("alo-gc");
    config.limits.segment_bytes = 64 * 1024;
    let mut broker = Broker::start_with(config.clone()).await;
    let api = api_of(&broker);
    let (conn, ch) = broker.channel().await;
    within(ch.confirm_select(Default::default())).await.unwrap();
    // A target full of 100 small fillers refuses the 100 letters; purged, it has room.
    let full = table(&[
        ("x-max-length", lapin::types::AMQPValue::LongInt(100)),
        ("x-overflow", long_str("reject-publish")),
    ]);
    fanout_to(&ch, "gc-dlx", &[("gc-target", full)]).await;
    for _ in 0..100 {
        assert!(publish(&ch, "gc-target", "f").await);
    }
    within(ch.queue_declare("gc-src".into(), durable(), at_least_once("gc-dlx", &[])))
        .await
        .unwrap();
    let body = "x".repeat(2000);
    for _ in 0..100 {
        assert!(publish(&ch, "gc-src", &body).await);
    }
    for _ in 0..100 {
        reject_next(&ch, "gc-src").await;
    }
    wait_counts(&api, "gc-src", (100, 0, 100)).await;
    within(ch.queue_purge("gc-target".into(), Default::default()))
        .await
        .unwrap();
    drop(ch);
    drop(conn);
    broker.stop().await;

    let broker = Broker::start_with(config).await;
    let api = api_of(&broker);
    wait_counts(&api, "gc-src", (0, 0, 0)).await;
    let (_c, ch) = broker.channel().await;
    assert_eq!(message_count(&ch, "gc-target").await, 100);
    // What is left is the source's: the target's log goes with it.
    within(ch.queue_delete("gc-target".into(), Default::default()))
        .await
        .unwrap();
    let left = segment_files(&dir);
    assert!(
        left.len() <= 3,
        "200 KB of settled letters in 64 KB segments, yet {} files are left: {left:?}",
        left.len()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A dead letter whose properties outgrow a frame is dropped (no consumer could be sent
/// it); held at least once, it is settled as dropped rather than kept and remade at every
/// retry for ever.
#[tokio::test]
async fn a_held_dead_letter_grown_past_a_frame_is_settled_as_dropped() {
    let mut config = Config::for_tests();
    config.management_listen = Some("127.0.0.1:0".parse().unwrap());
    config.limits.frame_max_bytes = 32 * 1024;
    let broker = Broker::start_with(config).await;
    let api = api_of(&broker);
    let (_c, ch) = broker.channel().await;
    within(ch.confirm_select(Default::default())).await.unwrap();
    fanout_to(
        &ch,
        "alo-big-dlx",
        &[("alo-big-target", FieldTable::default())],
    )
    .await;
    within(ch.queue_declare(
        "alo-big".into(),
        durable(),
        at_least_once("alo-big-dlx", &[]),
    ))
    .await
    .unwrap();
    // 20 KB of CC keys: the message fits in a frame, its dead letter (which lists them
    // again in x-death) does not.
    let cc: Vec<lapin::types::AMQPValue> =
        (0..200).map(|i| long_str(&format!("{i:0>100}"))).collect();
    let headers = table(&[("CC", lapin::types::AMQPValue::FieldArray(cc.into()))]);
    let confirm = within(
        ch.basic_publish(
            "".into(),
            "alo-big".into(),
            Default::default(),
            b"big",
            BasicProperties::default()
                .with_delivery_mode(2)
                .with_headers(headers),
        ),
    )
    .await
    .unwrap();
    assert!(within(confirm).await.unwrap().is_ack());
    reject_next(&ch, "alo-big").await;
    wait_counts(&api, "alo-big", (0, 0, 0)).await;
    assert_eq!(message_count(&ch, "alo-big-target").await, 0);
}

/// A held dead letter routed through the default exchange to a direct reply name reaches
/// the reply consumer, and that settles it: held for a queue, it would be handed to the
/// consumer again at every retry.
#[tokio::test]
async fn a_held_dead_letter_a_reply_consumer_took_is_settled() {
    use futures_lite::StreamExt;
    let (broker, api) = broker(50).await;
    let (_c1, requester) = broker.channel().await;
    let (_c2, ch) = broker.channel().await;
    within(ch.confirm_select(Default::default())).await.unwrap();
    let (mut replies, reply_to) = reply_consumer(&requester, &ch, "alo-rpc").await;
    within(ch.queue_declare(
        "alo-to-reply".into(),
        durable(),
        at_least_once(
            "",
            &[("x-dead-letter-routing-key", long_str(reply_to.as_str()))],
        ),
    ))
    .await
    .unwrap();
    assert!(publish(&ch, "alo-to-reply", "no answer in time").await);
    reject_next(&ch, "alo-to-reply").await;
    let got = within(replies.next()).await.unwrap().unwrap();
    assert_eq!(got.data, b"no answer in time");
    wait_counts(&api, "alo-to-reply", (0, 0, 0)).await;
}

/// A held dead letter that reached a reply consumer but not every queue it was routed to
/// is retried for those queues only: the reply consumer gets it once, not at every retry.
#[tokio::test]
async fn a_retry_does_not_hand_a_held_letter_to_its_reply_consumer_again() {
    use futures_lite::StreamExt;
    use lapin::types::AMQPValue;
    let (broker, api) = broker(50).await;
    let (_c1, requester) = broker.channel().await;
    let (_c2, ch) = broker.channel().await;
    within(ch.confirm_select(Default::default())).await.unwrap();
    let (mut replies, reply_to) = reply_consumer(&requester, &ch, "alo-rpc2").await;
    // A queue with no room: it refuses the letter until it is emptied.
    let full = table(&[
        ("x-max-length", AMQPValue::LongInt(1)),
        ("x-overflow", long_str("reject-publish")),
    ]);
    within(ch.queue_declare("alo-full".into(), durable(), full))
        .await
        .unwrap();
    assert!(publish(&ch, "alo-full", "filler").await);
    within(ch.queue_declare("alo-partial".into(), durable(), at_least_once("", &[])))
        .await
        .unwrap();
    within(ch.queue_bind(
        "alo-partial".into(),
        "amq.direct".into(),
        "alo-bound".into(),
        Default::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    // Dead-lettered through the default exchange with its keys: the reply name and
    // `alo-full` (its routing key names no queue there).
    let cc = AMQPValue::FieldArray(vec![long_str(reply_to.as_str()), long_str("alo-full")].into());
    let confirm = within(
        ch.basic_publish(
            "amq.direct".into(),
            "alo-bound".into(),
            Default::default(),
            b"late",
            BasicProperties::default()
                .with_delivery_mode(2)
                .with_headers(table(&[("CC", cc)])),
        ),
    )
    .await
    .unwrap();
    assert!(within(confirm).await.unwrap().is_ack());
    reject_next(&ch, "alo-partial").await;
    let first = within(replies.next()).await.unwrap().unwrap();
    assert_eq!(first.data, b"late");
    // Retries every 50 ms while `alo-full` refuses: each would hand the letter to the reply
    // consumer again if it did not count as having it.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let filler = within(ch.basic_get("alo-full".into(), BasicGetOptions { no_ack: true }))
        .await
        .unwrap();
    assert!(filler.is_some());
    wait_counts(&api, "alo-partial", (0, 0, 0)).await;
    assert_eq!(bodies(&ch, "alo-full").await, ["late"]);
    // A reply sent now comes after anything the retries handed over.
    within(ch.basic_publish(
        "".into(),
        reply_to.as_str().into(),
        Default::default(),
        b"sentinel",
        BasicProperties::default(),
    ))
    .await
    .unwrap();
    let next = within(replies.next()).await.unwrap().unwrap();
    assert_eq!(
        next.data, b"sentinel",
        "the letter reached the reply consumer once"
    );
}
