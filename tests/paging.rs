//! When queues move messages out of memory. Past the broker's memory budget a backlog that
//! no consumer is taking pages to disk; a stream its consumers keep pace with stays in memory
//! (until half the memory watermark, as RabbitMQ pages at its paging ratio). What a user
//! sees is the queue's `messages_paged_out` in the management API.

mod common;

use common::http::Api;
use common::*;
use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use tokio::sync::watch;

/// A broker with a 256 KiB memory budget and its management API.
async fn small_budget_broker() -> (Broker, Api) {
    let mut config = Config::for_tests();
    config.limits.memory_budget_bytes = 256 * 1024;
    config.management_listen = Some("127.0.0.1:0".parse().unwrap());
    let broker = Broker::start_with(config).await;
    let addr = broker
        .server
        .as_ref()
        .and_then(|s| s.management_addr())
        .expect("management listener");
    (broker, Api::new(addr, "guest", "guest"))
}

async fn paged_out(api: &Api, queue: &str) -> u64 {
    let q = api.get(&format!("/api/queues/%2F/{queue}")).await.json();
    q["messages_paged_out"]
        .as_u64()
        .expect("messages_paged_out")
}

/// A broker with an 8 MiB memory budget whose monitor looks every `monitor_interval_ms`,
/// and its management API.
async fn monitored_broker(monitor_interval_ms: u64) -> (Broker, Api) {
    let mut config = Config::for_tests();
    config.limits.memory_budget_bytes = 8 * 1024 * 1024;
    config.limits.monitor_interval_ms = monitor_interval_ms;
    config.management_listen = Some("127.0.0.1:0".parse().unwrap());
    let broker = Broker::start_with(config).await;
    let addr = broker.server.as_ref().and_then(|s| s.management_addr());
    let api = Api::new(addr.expect("management listener"), "guest", "guest");
    (broker, api)
}

/// Publishes `count` bodies of 256 KiB of `fill` to `queue` through the default exchange.
async fn publish_256k(ch: &lapin::Channel, queue: &str, fill: u8, count: usize) {
    let body = vec![fill; 256 * 1024];
    for _ in 0..count {
        within(ch.basic_publish(
            "".into(),
            queue.into(),
            Default::default(),
            &body,
            Default::default(),
        ))
        .await
        .unwrap();
    }
}

/// Runs the broker past its 8 MiB budget with 8 MiB held by a transaction that is not
/// committed (which nothing pages), in queue `elsewhere`; returns the channel holding it.
async fn fill_memory_elsewhere(broker: &Broker) -> (lapin::Connection, lapin::Channel) {
    let (conn, tx) = broker.channel().await;
    within(tx.queue_declare(
        "elsewhere".into(),
        Default::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    within(tx.tx_select()).await.unwrap();
    publish_256k(&tx, "elsewhere", b'e', 32).await;
    (conn, tx)
}

async fn until_paged_out(api: &Api, queue: &str) {
    within(async {
        while paged_out(api, queue).await == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn a_backlog_with_no_consumer_pages_out_past_the_budget() {
    let (broker, api) = small_budget_broker().await;
    let (_c, ch) = broker.channel().await;
    within(ch.queue_declare("held".into(), Default::default(), FieldTable::default()))
        .await
        .unwrap();
    let body = vec![b'h'; 512 * 1024];
    for _ in 0..8 {
        within(ch.basic_publish(
            "".into(),
            "held".into(),
            Default::default(),
            &body,
            Default::default(),
        ))
        .await
        .unwrap();
    }
    let q = within(async {
        loop {
            let q = api.get("/api/queues/%2F/held").await.json();
            if q["messages"] == 8 {
                return q;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    let paged = q["messages_paged_out"].as_u64().unwrap();
    assert!(paged > 0, "4 MiB held under a 256 KiB budget: {q}");
    assert_eq!(q["messages_ram"].as_u64().unwrap() + paged, 8);
    // Same as RabbitMQ: `memory` is what the queue holds in memory, not what it pages out
    // (it showed all 4 MiB).
    let in_memory = q["messages_ram"].as_u64().unwrap();
    let memory = q["memory"].as_u64().unwrap();
    assert!(memory >= in_memory * 512 * 1024, "{q}");
    assert!(memory < (in_memory + 1) * 512 * 1024, "{q}");
    assert_eq!(q["message_bytes"], 8 * 512 * 1024);
}

#[tokio::test]
async fn a_stream_its_consumer_keeps_pace_with_is_not_paged() {
    let (broker, api) = small_budget_broker().await;
    let (_pc, publisher) = broker.channel().await;
    let (_cc, consumer_ch) = broker.channel().await;
    within(publisher.queue_declare("stream".into(), Default::default(), FieldTable::default()))
        .await
        .unwrap();
    let mut consumer = within(consumer_ch.basic_consume(
        "stream".into(),
        "reader".into(),
        BasicConsumeOptions {
            no_ack: true,
            ..Default::default()
        },
        FieldTable::default(),
    ))
    .await
    .unwrap();
    let (received_tx, mut received) = watch::channel(0u64);
    tokio::spawn(async move {
        let mut n = 0;
        while let Some(Ok(_)) = consumer.next().await {
            n += 1;
            let _ = received_tx.send(n);
        }
    });
    // A burst of 12 MiB: far more than the budget and the 1 MiB a queue holds before it
    // considers paging, taken by the consumer as fast as it comes.
    let body = vec![b's'; 512 * 1024];
    let total = 24u64;
    for _ in 0..total {
        within(publisher.basic_publish(
            "".into(),
            "stream".into(),
            Default::default(),
            &body,
            Default::default(),
        ))
        .await
        .unwrap();
    }
    let most_paged = paged_out(&api, "stream").await;
    within(received.wait_for(|&n| n == total)).await.unwrap();
    assert_eq!(
        most_paged, 0,
        "a stream the consumer keeps up with stays in memory"
    );
}

/// A publish on channel 1 of a `body_bytes` body of `fill` to `exchange` with `routing_key`:
/// its method, content header and body frames, as one write.
fn publish_raw(exchange: &str, routing_key: &str, body_bytes: usize, fill: u8) -> Vec<u8> {
    let mut method = vec![0, 60, 0, 40, 0, 0, exchange.len() as u8];
    method.extend_from_slice(exchange.as_bytes());
    method.push(routing_key.len() as u8);
    method.extend_from_slice(routing_key.as_bytes());
    method.push(0);
    let mut header = vec![0, 60, 0, 0];
    header.extend_from_slice(&(body_bytes as u64).to_be_bytes());
    header.extend_from_slice(&[0, 0]);
    let mut frames = raw_frame(1, 1, &method);
    frames.extend(raw_frame(2, 1, &header));
    frames.extend(raw_frame(3, 1, &vec![fill; body_bytes]));
    frames
}

/// A client can send a tiny message followed by bytes the broker drops (here an
/// unroutable publish), over and over. Each tiny message is a slice of the read buffer it
/// arrived in, so a queue of them kept every buffer alive: 24 MiB of memory for 400 messages
/// the queue counted as a few hundred bytes each, too few for it ever to page. Past the
/// memory budget, queues now copy such messages out of their read buffers, which frees
/// them: what is left in memory is what the messages are.
#[tokio::test]
async fn tiny_messages_do_not_keep_the_buffers_they_arrived_in_once_memory_runs_short() {
    let mut config = Config::for_tests();
    config.limits.memory_budget_bytes = 1024 * 1024;
    config.limits.monitor_interval_ms = 20;
    let broker = Broker::start_with(config).await;
    let memory = broker.server.as_ref().unwrap().broker().memory;
    let (_c, ch) = broker.channel().await;
    within(ch.queue_declare("tiny".into(), Default::default(), FieldTable::default()))
        .await
        .unwrap();
    let before = memory.used();
    let mut raw = broker.raw().await;
    raw.handshake().await;
    raw.open_channel(1).await;
    let sent = 400;
    for _ in 0..sent {
        let mut bytes = publish_raw("", "tiny", 1, b't');
        bytes.extend(publish_raw("", "nowhere", 60 * 1024, b'f'));
        raw.send(&bytes).await;
    }
    within(async {
        while message_count(&ch, "tiny").await < sent {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    let held = within(async {
        loop {
            let held = memory.used().saturating_sub(before);
            if held < 2 * 1024 * 1024 {
                return held;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(
        held < 2 * 1024 * 1024,
        "{held} bytes held for {sent} tiny messages"
    );
    // The messages are whole.
    for _ in 0..sent {
        let m = get_eventually(&ch, "tiny").await;
        assert_eq!(m.delivery.data, b"t");
    }
    assert_eq!(message_count(&ch, "tiny").await, 0);
}

/// Same as RabbitMQ, whose memory monitor tells every queue to reduce what it keeps in
/// memory: a backlog that built up while memory was plentiful pages out once memory runs
/// short, though nothing is published to its queue any more. (Queues paged only when a
/// publish to them found memory short.)
#[tokio::test]
async fn an_idle_backlog_pages_out_when_memory_runs_short_elsewhere() {
    let (broker, api) = monitored_broker(20).await;
    let (_c, ch) = broker.channel().await;
    within(ch.queue_declare("idle".into(), Default::default(), FieldTable::default()))
        .await
        .unwrap();
    publish_256k(&ch, "idle", b'i', 12).await;
    while message_count(&ch, "idle").await < 12 {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(
        paged_out(&api, "idle").await,
        0,
        "3 MiB under an 8 MiB budget"
    );
    let _held = fill_memory_elsewhere(&broker).await;
    until_paged_out(&api, "idle").await;
    for _ in 0..12 {
        let m = get_eventually(&ch, "idle").await;
        assert_eq!(m.delivery.data, vec![b'i'; 256 * 1024]);
    }
}

/// Same as RabbitMQ, whose memory monitor has every queue reduce its memory: a backlog whose
/// one consumer takes nothing (prefetch 1, never acks) pages out once memory runs short,
/// though nothing is published to it. The monitor asks once a second, and each question
/// took the pace afresh, so such a queue always seemed to keep up and never paged.
#[tokio::test]
async fn a_backlog_whose_consumer_takes_nothing_pages_out_when_memory_runs_short() {
    let (broker, api) = monitored_broker(1000).await;
    let (_c, ch) = broker.channel().await;
    within(ch.queue_declare("slow".into(), Default::default(), FieldTable::default()))
        .await
        .unwrap();
    publish_256k(&ch, "slow", b's', 12).await;
    while message_count(&ch, "slow").await < 12 {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let (_cc, consumer) = broker.channel().await;
    within(consumer.basic_qos(1, Default::default()))
        .await
        .unwrap();
    let mut deliveries = within(consumer.basic_consume(
        "slow".into(),
        "stuck".into(),
        Default::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    let first = within(deliveries.next())
        .await
        .expect("one delivery")
        .unwrap();
    assert_eq!(first.data.len(), 256 * 1024);
    assert_eq!(paged_out(&api, "slow").await, 0, "under the budget");
    let _held = fill_memory_elsewhere(&broker).await;
    until_paged_out(&api, "slow").await;
    // The consumer gets the rest once it acknowledges, read back intact.
    within(first.ack(Default::default())).await.unwrap();
    for _ in 0..11 {
        let d = within(deliveries.next()).await.expect("delivery").unwrap();
        assert_eq!(d.data, vec![b's'; 256 * 1024]);
        within(d.ack(Default::default())).await.unwrap();
    }
}

/// Same as RabbitMQ, which stores a message's routing keys with it: a message that was paged
/// out and read back is dead-lettered with the keys its `CC` header added, as it would have
/// been had it stayed in memory. (They were lost with the page-out.)
#[tokio::test]
async fn a_message_read_back_is_dead_lettered_with_its_cc_keys() {
    use lapin::types::{AMQPValue, FieldArray};
    let (broker, api) = small_budget_broker().await;
    let (_c, ch) = broker.channel().await;
    within(ch.exchange_declare(
        "dlx-direct".into(),
        lapin::ExchangeKind::Direct,
        Default::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    within(ch.queue_declare("by-cc".into(), Default::default(), FieldTable::default()))
        .await
        .unwrap();
    within(ch.queue_bind(
        "by-cc".into(),
        "dlx-direct".into(),
        "cc-key".into(),
        Default::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    let mut args = FieldTable::default();
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString("dlx-direct".into()),
    );
    within(ch.queue_declare("source".into(), Default::default(), args))
        .await
        .unwrap();
    let filler = vec![b'f'; 256 * 1024];
    for _ in 0..5 {
        within(ch.basic_publish(
            "".into(),
            "source".into(),
            Default::default(),
            &filler,
            Default::default(),
        ))
        .await
        .unwrap();
    }
    let mut headers = FieldTable::default();
    let cc = FieldArray::from(vec![AMQPValue::LongString("cc-key".into())]);
    headers.insert("CC".into(), AMQPValue::FieldArray(cc));
    let properties = lapin::BasicProperties::default().with_headers(headers);
    within(ch.basic_publish(
        "".into(),
        "source".into(),
        Default::default(),
        b"cc",
        properties,
    ))
    .await
    .unwrap();
    within(async {
        while paged_out(&api, "source").await == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    for _ in 0..5 {
        get_eventually(&ch, "source").await;
    }
    let m = within(ch.basic_get("source".into(), BasicGetOptions { no_ack: false }))
        .await
        .unwrap()
        .expect("the message with CC");
    assert_eq!(m.delivery.data, b"cc");
    within(
        m.delivery
            .acker
            .reject(BasicRejectOptions { requeue: false }),
    )
    .await
    .unwrap();
    let dead = get_eventually(&ch, "by-cc").await;
    assert_eq!(dead.delivery.data, b"cc");
}

/// A queue that pages out with messages out at consumers keeps its order when they come
/// back: paging keeps requeued messages in memory, since others (older than the newest one
/// taken) may still come back among them. Before, the queue paged the newer part of a
/// closed channel's messages, another channel's older ones came back ahead of them, and a
/// consumer got 40..79 before 16..39.
#[tokio::test]
async fn messages_requeued_around_a_page_out_keep_the_queue_order() {
    let (broker, _api) = small_budget_broker().await;
    let (_c, ch) = broker.channel().await;
    within(ch.queue_declare("order".into(), Default::default(), FieldTable::default()))
        .await
        .unwrap();
    let publish = |i: usize| {
        let ch = ch.clone();
        async move {
            let mut body = format!("{i:04}").into_bytes();
            body.resize(32 * 1024, b'.');
            ch.basic_publish(
                "".into(),
                "order".into(),
                Default::default(),
                &body,
                Default::default(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        }
    };
    for i in 0..80 {
        within(publish(i)).await;
    }
    let (conn_a, a) = broker.channel().await;
    let (_conn_b, b) = broker.channel().await;
    let take = |ch: &lapin::Channel| {
        let ch = ch.clone();
        async move {
            within(ch.basic_get("order".into(), BasicGetOptions { no_ack: false }))
                .await
                .unwrap()
                .expect("a message")
        }
    };
    for _ in 0..40 {
        take(&a).await;
    }
    let mut last_of_b = None;
    for _ in 0..40 {
        last_of_b = Some(take(&b).await);
    }
    // A's 40 come back (1.25 MiB ready, over the budget); a publish pages the queue out.
    within(conn_a.close(200, "bye".into())).await.unwrap();
    within(publish(80)).await;
    // B's 40, older than the newest of A's paged ones were, come back too.
    within(last_of_b.unwrap().delivery.nack(BasicNackOptions {
        multiple: true,
        requeue: true,
    }))
    .await
    .unwrap();
    let mut seen = Vec::new();
    while let Some(m) = within(ch.basic_get("order".into(), BasicGetOptions { no_ack: true }))
        .await
        .unwrap()
    {
        seen.push(
            String::from_utf8_lossy(&m.delivery.data[..4])
                .parse::<usize>()
                .unwrap(),
        );
    }
    assert_eq!(seen, (0..=80).collect::<Vec<_>>());
}

/// A backlog is read back from disk 256 KiB at a time, and its messages are slices of that
/// read buffer: a consumer that keeps one message of each buffer unacknowledged keeps every
/// buffer alive. The memory gauge counted each kept message at its own size, so the 25 MiB
/// that 100 such messages kept went unseen by paging and by the memory monitor's relief.
/// The read buffers are now charged while any message of theirs lives, as the read buffers
/// of connections are, and the charge goes when the last of them is acknowledged.
#[tokio::test]
async fn messages_kept_from_a_backlog_read_back_are_charged_the_buffers_they_keep() {
    const COUNT: usize = 25_000;
    const KEEP_EVERY: usize = 250;
    let (broker, _api) = small_budget_broker().await;
    let memory = broker.server.as_ref().unwrap().broker().memory;
    let (_c, ch) = broker.channel().await;
    within(ch.queue_declare("kept".into(), Default::default(), FieldTable::default()))
        .await
        .unwrap();
    let before = memory.used();
    let body = vec![b'k'; 1024];
    for _ in 0..COUNT {
        within(ch.basic_publish(
            "".into(),
            "kept".into(),
            Default::default(),
            &body,
            Default::default(),
        ))
        .await
        .unwrap();
    }
    within(async {
        while message_count(&ch, "kept").await < COUNT as u32 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    let (_cc, consumer) = broker.channel().await;
    let mut deliveries = within(consumer.basic_consume(
        "kept".into(),
        "keeper".into(),
        BasicConsumeOptions::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    let mut kept = Vec::new();
    for i in 0..COUNT {
        let d = within(deliveries.next()).await.unwrap().unwrap();
        if i % KEEP_EVERY == KEEP_EVERY - 1 {
            kept.push(d);
        } else {
            within(d.ack(BasicAckOptions::default())).await.unwrap();
        }
    }
    // A round trip on the consumer's channel: every ack before it has been handled.
    assert_eq!(message_count(&consumer, "kept").await, 0);
    let held = memory.used().saturating_sub(before);
    assert!(
        held > kept.len() * 64 * 1024,
        "{} messages kept from {} read buffers are charged {held} bytes",
        kept.len(),
        COUNT / KEEP_EVERY
    );
    for d in kept {
        within(d.ack(BasicAckOptions::default())).await.unwrap();
    }
    within(async {
        while memory.used().saturating_sub(before) > 4 * 1024 * 1024 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
}
