//! Hostile and careless clients: whatever one connection does, the broker stays up, and a
//! witness connection beside it stays healthy.

mod common;

use std::time::Duration;

use amq_protocol::frame::AMQPFrame;
use amq_protocol::protocol::{AMQPClass, basic, connection};
use amq_protocol::types::{AMQPValue, FieldTable};
use common::*;
use lapin::options::*;

/// Publishes `n` messages of `size` bytes to `queue` and waits for their confirms.
async fn fill(ch: &lapin::Channel, queue: &str, n: usize, size: usize) {
    within(ch.confirm_select(Default::default())).await.unwrap();
    let body = vec![b'x'; size];
    let mut confirms = Vec::with_capacity(n);
    for _ in 0..n {
        confirms.push(
            within(ch.basic_publish(
                "".into(),
                queue.into(),
                Default::default(),
                &body,
                Default::default(),
            ))
            .await
            .unwrap(),
        );
    }
    for c in confirms {
        within(c).await.unwrap();
    }
}

async fn ready(ch: &lapin::Channel, queue: &str) -> u32 {
    within(ch.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    ))
    .await
    .unwrap()
    .message_count()
}

/// Polls `cond` every few milliseconds until it holds or the test's wait runs out.
async fn eventually(cond: impl AsyncFnMut() -> bool) {
    eventually_within(WAIT, cond).await
}

/// [`eventually`] with a bound of its own, for work that takes long in a debug build.
async fn eventually_within(wait: Duration, mut cond: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + wait;
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition never held"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Same as RabbitMQ (its TCP send timeout): a consumer that stops reading its socket while
/// the broker has megabytes for it is disconnected, and the deliveries it held go back to
/// the queue. Heartbeats are off, so only the send timeout can notice.
#[tokio::test]
async fn a_client_that_stops_reading_is_disconnected_after_the_send_timeout() {
    let mut config = Config::for_tests();
    config.limits.send_timeout_ms = 300;
    let broker = Broker::start_with(config).await;
    let (_witness_conn, witness) = broker.channel().await;
    within(witness.queue_declare("big".into(), Default::default(), FieldTable::default()))
        .await
        .unwrap();
    fill(&witness, "big", 400, 64 * 1024).await;

    let mut victim = broker.raw().await;
    victim.handshake().await;
    victim.open_channel(1).await;
    victim
        .send_method(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
                queue: "big".into(),
                consumer_tag: "stuck".into(),
                no_local: false,
                no_ack: false,
                exclusive: false,
                nowait: true,
                arguments: FieldTable::default(),
            })),
        )
        .await;
    // The victim reads nothing from here on.
    let server = broker.server.as_ref().unwrap().broker().clone();
    eventually(async || server.connection_count() == 1).await;
    assert_eq!(
        ready(&witness, "big").await,
        400,
        "everything the stuck consumer held is back"
    );
    drop(victim);
}

/// A field table nesting `levels` arrays inside each other, encoded by hand (encoding it
/// with a recursive encoder would risk this test's own stack).
fn nested_table(levels: usize) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(8 + 5 * levels);
    bytes.extend_from_slice(&((2 + 5 * levels) as u32).to_be_bytes());
    bytes.extend_from_slice(&[1, b'a']);
    for d in 0..levels {
        bytes.push(b'A');
        bytes.extend_from_slice(&((5 * (levels - d - 1)) as u32).to_be_bytes());
    }
    bytes
}

fn short_str(out: &mut Vec<u8>, s: &str) {
    out.push(s.len() as u8);
    out.extend_from_slice(s.as_bytes());
}

/// A client that goes on sending bytes that are no frame after the broker's
/// Connection.Close (here for a body frame on channel 0) used to be read on until the close
/// deadline (30 s, longer than the test waits), everything it sent kept unparsed and copied
/// again with every read: time quadratic in what it sent. The broker now stops reading at
/// the bad frame and closes the socket.
#[tokio::test]
async fn garbage_after_the_brokers_connection_close_ends_the_connection() {
    let broker = Broker::start().await;
    let mut raw = broker.raw().await;
    raw.handshake().await;
    raw.send(&raw_frame(3, 0, b"x")).await;
    loop {
        match raw.recv_method().await {
            Some((0, AMQPClass::Connection(connection::AMQPMethod::Close(close)))) => {
                assert_eq!(close.reply_code, 505);
                break;
            }
            Some(_) => continue,
            None => panic!("the socket closed before Connection.Close"),
        }
    }
    // A frame larger than frame_max (its type, channel and size all 9s), then more.
    raw.send(&[9u8; 64 * 1024]).await;
    assert!(raw.closed().await);
    witness_works(&broker).await;
}

/// The witness: a second connection that must still publish and consume.
async fn witness_works(broker: &Broker) {
    let (_c, ch) = broker.channel().await;
    let q = within(ch.queue_declare("".into(), Default::default(), FieldTable::default()))
        .await
        .unwrap();
    within(ch.basic_publish(
        "".into(),
        q.name().as_str().into(),
        Default::default(),
        b"still here",
        Default::default(),
    ))
    .await
    .unwrap();
    let got = within(ch.basic_get(q.name().as_str().into(), Default::default()))
        .await
        .unwrap()
        .expect("the witness gets its message");
    assert_eq!(&got.delivery.data[..], b"still here");
}

/// Headers nested 1,300 deep in a publish used to overflow a worker's stack in the recursive
/// decoder and abort the broker. Now the content header is refused as undecodable (501),
/// the connection closes, and nothing else is disturbed.
#[tokio::test]
async fn deeply_nested_headers_close_the_connection_not_the_broker() {
    let broker = Broker::start().await;
    let mut raw = broker.raw().await;
    raw.handshake().await;
    raw.open_channel(1).await;
    let mut publish = vec![0, 60, 0, 40, 0, 0];
    short_str(&mut publish, "");
    short_str(&mut publish, "anywhere");
    publish.push(0);
    raw.send(&raw_frame(1, 1, &publish)).await;
    let mut header = vec![0, 60, 0, 0];
    header.extend_from_slice(&1u64.to_be_bytes());
    header.extend_from_slice(&(1u16 << 13).to_be_bytes()); // headers only
    header.extend_from_slice(&nested_table(1300));
    raw.send(&raw_frame(2, 1, &header)).await;
    raw.send(&raw_frame(3, 1, b"x")).await;
    let (code, text, class, method) = raw.expect_connection_close().await;
    assert_eq!(code, 501);
    assert_eq!(
        text,
        "FRAME_ERROR - cannot decode field table: nested deeper than 64 levels"
    );
    assert_eq!((class, method), (60, 40));
    witness_works(&broker).await;
}

/// The same nesting in queue.declare's arguments (decoded by amq-protocol on the cold path).
#[tokio::test]
async fn deeply_nested_arguments_close_the_connection_not_the_broker() {
    let broker = Broker::start().await;
    let mut raw = broker.raw().await;
    raw.handshake().await;
    raw.open_channel(1).await;
    let mut declare = vec![0, 50, 0, 10, 0, 0];
    short_str(&mut declare, "deep");
    declare.push(0);
    declare.extend_from_slice(&nested_table(1300));
    raw.send(&raw_frame(1, 1, &declare)).await;
    let (code, text, class, method) = raw.expect_connection_close().await;
    assert_eq!(code, 501);
    assert_eq!(
        text,
        "FRAME_ERROR - cannot decode field table: nested deeper than 64 levels"
    );
    assert_eq!((class, method), (50, 10));
    witness_works(&broker).await;
}

/// 20,000 16-byte messages, each arriving in its own socket read and kept in a queue, used to
/// keep 20,000 read buffers of 64 KiB alive (1.2 GB) under a 64 MiB budget. A retained
/// message now owns memory proportional to its size: the broker's resident memory grows by
/// a few megabytes. Measured on the real binary, from /proc.
#[tokio::test]
async fn retained_small_messages_cost_their_size_not_their_read_buffers() {
    let dir = temp_dir("hostile-rss");
    let broker = Process::start(&[], &dir);
    let conn = broker.connect().await;
    let ch = within(conn.create_channel()).await.unwrap();
    within(ch.queue_declare("kept".into(), Default::default(), FieldTable::default()))
        .await
        .unwrap();
    within(ch.confirm_select(Default::default())).await.unwrap();
    let before = broker.rss_bytes();
    for i in 0..20_000u32 {
        // Waiting for each confirm makes every message arrive in a read of its own.
        let confirm = within(ch.basic_publish(
            "".into(),
            "kept".into(),
            Default::default(),
            format!("{i:016}").as_bytes(),
            Default::default(),
        ))
        .await
        .unwrap();
        within(confirm).await.unwrap();
    }
    assert_eq!(ready(&ch, "kept").await, 20_000);
    let grown = broker.rss_bytes().saturating_sub(before);
    assert!(
        grown < 32 << 20,
        "20,000 retained 16-byte messages grew the broker by {} MiB",
        grown >> 20
    );
    drop(broker);
    let _ = std::fs::remove_dir_all(dir);
}

/// A chain of 2,000 queues, each expiring its messages at once (`x-message-ttl` 0) into the
/// next, used to walk the message through all of them in one call stack: quadratic `x-death`
/// work, then a stack overflow that aborted the broker. Dead letters are now routed as work
/// on a background thread, a bounded batch at a time: the message reaches the end of the
/// chain with one `x-death` entry per queue, in RabbitMQ's order, and a witness connection
/// works throughout.
#[tokio::test]
async fn a_long_dead_letter_chain_is_walked_as_work_not_recursion() {
    const CHAIN: usize = 2000;
    // 2,000 entries make a 240 KB content header. RabbitMQ sends a header frame of any size
    // (frame_max only splits bodies), and so does Lepus; lapin refuses frames larger than
    // frame_max, so this test negotiates a larger one to read the message.
    let mut config = Config::for_tests();
    config.limits.frame_max_bytes = 1 << 20;
    let broker = Broker::start_with(config).await;
    let (_c, ch) = broker.channel().await;
    let name = |i: usize| format!("chain-{i}");
    within(ch.queue_declare(
        name(CHAIN).as_str().into(),
        Default::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    for i in (0..CHAIN).rev() {
        within(ch.queue_declare(
            name(i).as_str().into(),
            Default::default(),
            table(&[
                ("x-message-ttl", AMQPValue::LongInt(0)),
                ("x-dead-letter-exchange", long_str("")),
                ("x-dead-letter-routing-key", long_str(&name(i + 1))),
            ]),
        ))
        .await
        .unwrap();
    }
    within(ch.basic_publish(
        "".into(),
        name(0).as_str().into(),
        Default::default(),
        b"walker",
        Default::default(),
    ))
    .await
    .unwrap();
    witness_works(&broker).await;
    let mut got = None;
    // A generous bound, not a timing: the chain rewrites a header growing to 240 KB 2,000
    // times (about 1 s in a release build, much longer unoptimised).
    eventually_within(Duration::from_secs(120), async || {
        got = within(ch.basic_get(name(CHAIN).as_str().into(), Default::default()))
            .await
            .unwrap();
        got.is_some()
    })
    .await;
    let got = got.unwrap();
    assert_eq!(&got.delivery.data[..], b"walker");
    let headers = got
        .delivery
        .properties
        .headers()
        .clone()
        .unwrap_or_default();
    let Some(AMQPValue::FieldArray(deaths)) = headers.inner().get("x-death") else {
        panic!("no x-death: {headers:?}");
    };
    assert_eq!(deaths.as_slice().len(), CHAIN, "one entry per queue");
    let queue_of = |entry: &AMQPValue| match entry {
        AMQPValue::FieldTable(t) => match t.inner().get("queue") {
            Some(AMQPValue::LongString(s)) => s.to_string(),
            other => panic!("queue is {other:?}"),
        },
        other => panic!("entry is {other:?}"),
    };
    // RabbitMQ 3.10 puts the newest entry first and regroups the older ones with a fold
    // that reverses them: after hops 0..n the order is n, n-2, n-4, ..., 1, 0, 2, ..., n-1
    // (for odd n). Same as RabbitMQ, entry for entry.
    let mut expected: Vec<usize> = Vec::new();
    for hop in 0..CHAIN {
        if expected.len() > 1 {
            expected.reverse();
        }
        expected.insert(0, hop);
    }
    let got: Vec<String> = deaths.as_slice().iter().map(queue_of).collect();
    let expected: Vec<String> = expected.into_iter().map(name).collect();
    assert_eq!(got, expected);
    assert!(matches!(
        headers.inner().get("x-first-death-queue"),
        Some(AMQPValue::LongString(s)) if s.to_string() == name(0)
    ));
    witness_works(&broker).await;
}

/// A topic binding `#.#.#.#.#.#.#.#.#.#.z` and 100-word routing keys used to take time
/// exponential in the `#`s under the exchange's lock, freezing the broker. Matching is now a
/// walk over a set of trie states, linear in the key: both publishes route at once (the
/// second matches), and the witness works.
#[tokio::test]
async fn adversarial_topic_bindings_cost_linear_time() {
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    within(ch.queue_declare("hashes".into(), Default::default(), FieldTable::default()))
        .await
        .unwrap();
    within(ch.queue_bind(
        "hashes".into(),
        "amq.topic".into(),
        "#.#.#.#.#.#.#.#.#.#.z".into(),
        Default::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    let miss = vec!["a"; 100].join(".");
    let hit = format!("{}.z", vec!["a"; 99].join("."));
    for key in [&miss, &hit] {
        within(ch.basic_publish(
            "amq.topic".into(),
            key.as_str().into(),
            Default::default(),
            b"m",
            Default::default(),
        ))
        .await
        .unwrap();
    }
    witness_works(&broker).await;
    assert_eq!(
        ready(&ch, "hashes").await,
        1,
        "only the key ending in z matches"
    );
}

/// Declares `n` queues named `{prefix}{i}` and binds each to `exchange` with `key`, without
/// waiting for each answer; a passive declare of the last one waits for them all.
async fn bound_queues(ch: &lapin::Channel, prefix: &str, n: usize, exchange: &str, key: &str) {
    let nowait = || QueueDeclareOptions {
        nowait: true,
        ..Default::default()
    };
    for i in 0..n {
        let name = format!("{prefix}{i}");
        within(ch.queue_declare(name.as_str().into(), nowait(), FieldTable::default()))
            .await
            .unwrap();
        within(ch.queue_bind(
            name.as_str().into(),
            exchange.into(),
            key.into(),
            QueueBindOptions { nowait: true },
            FieldTable::default(),
        ))
        .await
        .unwrap();
    }
    ready(ch, &format!("{prefix}{}", n - 1)).await;
}

/// Publishes `body` to `exchange` with these headers.
async fn publish_with(ch: &lapin::Channel, exchange: &str, key: &str, headers: FieldTable) {
    within(ch.basic_publish(
        exchange.into(),
        key.into(),
        Default::default(),
        b"m",
        lapin::BasicProperties::default().with_headers(headers),
    ))
    .await
    .unwrap();
}

/// 12,000 CC keys on a publish used to add every matching binding once per key before the
/// duplicates were dropped: against 2,000 queues bound with `k` to a direct exchange (or with
/// `#` to a topic exchange) that is 24 million entries per message, on a worker thread. Now
/// a repeated key is looked up once and a topic binding is reported once, whatever matches
/// it: each queue gets each message once, and at once.
#[tokio::test]
async fn thousands_of_cc_keys_cost_the_keys_plus_the_bindings() {
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    bound_queues(&ch, "cc-direct-", 2_000, "amq.direct", "k").await;
    bound_queues(&ch, "cc-topic-", 2_000, "amq.topic", "#").await;
    let same: Vec<AMQPValue> = (0..12_000).map(|_| long_str("k")).collect();
    let distinct: Vec<AMQPValue> = (0..12_000).map(|i| long_str(&i.to_string())).collect();
    // All of it within one bounded wait (it took 100 s before).
    within(async {
        for _ in 0..5 {
            for (exchange, keys) in [("amq.direct", &same), ("amq.topic", &distinct)] {
                let cc = table(&[("CC", AMQPValue::FieldArray(keys.clone().into()))]);
                publish_with(&ch, exchange, "k", cc).await;
            }
        }
        assert_eq!(ready(&ch, "cc-direct-1999").await, 5);
        assert_eq!(ready(&ch, "cc-topic-1999").await, 5);
    })
    .await;
    witness_works(&broker).await;
}

/// A headers binding's arguments were each looked up by scanning the message's headers: a
/// binding with 4,000 arguments (about the most a binding keeps) against a message with
/// 4,000 headers was 8 million comparisons per binding per message. Now each is a lookup in
/// the sorted table.
#[tokio::test]
async fn large_headers_bindings_cost_linear_time() {
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    let pairs: Vec<(String, AMQPValue)> = (0..4_000)
        .map(|i| (format!("h{i}"), AMQPValue::LongInt(i)))
        .collect();
    let mut args = FieldTable::default();
    args.insert("x-match".into(), long_str("all"));
    for (k, v) in &pairs {
        args.insert(k.as_str().into(), v.clone());
    }
    for i in 0..20 {
        let q = format!("wide-{i}");
        within(ch.queue_declare(q.as_str().into(), Default::default(), FieldTable::default()))
            .await
            .unwrap();
        within(ch.queue_bind(
            q.as_str().into(),
            "amq.headers".into(),
            "".into(),
            Default::default(),
            args.clone(),
        ))
        .await
        .unwrap();
    }
    let mut headers = FieldTable::default();
    for (k, v) in &pairs {
        headers.insert(k.as_str().into(), v.clone());
    }
    within(async {
        for _ in 0..10 {
            publish_with(&ch, "amq.headers", "", headers.clone()).await;
        }
        assert_eq!(ready(&ch, "wide-19").await, 10);
    })
    .await;
    witness_works(&broker).await;
}

/// Exchanges reached through exchange-to-exchange bindings were remembered in a list
/// searched on every hop: a fanout exchange bound to 50,000 exchanges was 1.25 billion
/// comparisons per message. Now a set: each is reached once, in linear time.
#[tokio::test]
async fn a_fanout_to_fifty_thousand_exchanges_routes_in_linear_time() {
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    within(ch.exchange_declare(
        "spread".into(),
        lapin::ExchangeKind::Fanout,
        Default::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    let nowait = || ExchangeDeclareOptions {
        nowait: true,
        ..Default::default()
    };
    for i in 0..50_000 {
        let name = format!("leaf-{i}");
        within(ch.exchange_declare(
            name.as_str().into(),
            lapin::ExchangeKind::Fanout,
            nowait(),
            FieldTable::default(),
        ))
        .await
        .unwrap();
        within(ch.exchange_bind(
            name.as_str().into(),
            "spread".into(),
            "".into(),
            ExchangeBindOptions { nowait: true },
            FieldTable::default(),
        ))
        .await
        .unwrap();
    }
    within(ch.queue_declare("leaves".into(), Default::default(), FieldTable::default()))
        .await
        .unwrap();
    within(ch.queue_bind(
        "leaves".into(),
        "leaf-49999".into(),
        "".into(),
        Default::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    within(async {
        // A routing key of its own each, so that no route is taken from the cache.
        for i in 0..10 {
            publish_with(&ch, "spread", &i.to_string(), FieldTable::default()).await;
        }
        assert_eq!(ready(&ch, "leaves").await, 10);
    })
    .await;
    witness_works(&broker).await;
}

/// Deliveries settled together are grouped by queue; past a few queues the groups are found
/// through a map (a channel holding deliveries from 100,000 queues was quadratic to settle).
/// Requeued with one nack or given back by closing the channel, each message returns to its
/// own queue.
#[tokio::test]
async fn deliveries_from_many_queues_settle_back_to_their_own_queues() {
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    let queues: Vec<String> = (0..40).map(|i| format!("many-{i}")).collect();
    for q in &queues {
        within(ch.queue_declare(q.as_str().into(), Default::default(), FieldTable::default()))
            .await
            .unwrap();
        publish_with(&ch, "", q, FieldTable::default()).await;
    }
    let (_c2, taker) = broker.channel().await;
    let mut last = 0;
    for q in &queues {
        let got = within(taker.basic_get(q.as_str().into(), BasicGetOptions::default()))
            .await
            .unwrap()
            .expect("a message");
        last = got.delivery.delivery_tag;
    }
    within(taker.basic_nack(
        last,
        BasicNackOptions {
            multiple: true,
            requeue: true,
        },
    ))
    .await
    .unwrap();
    for q in &queues {
        assert_eq!(ready(&ch, q).await, 1, "{q}");
    }
    for q in &queues {
        within(taker.basic_get(q.as_str().into(), BasicGetOptions::default()))
            .await
            .unwrap()
            .expect("a message");
    }
    within(taker.close(200, "done".into())).await.unwrap();
    for q in &queues {
        assert_eq!(ready(&ch, q).await, 1, "{q}");
    }
}

/// A few bytes of input can ask for a lot of output: here a `basic.get` of a 1 MiB message,
/// given back by `basic.recover` and got again, 300 times in one write (13 KB). The broker
/// stops parsing once the client has its output limit to read, as it stops reading: what
/// it holds for the client, and the memory it accounts, stay near that limit, where they
/// grew by the whole message for every get in the read (300 MiB here; 128 MiB messages made
/// it hundreds of GB). And the input left unparsed is parsed as the client reads, without
/// it sending more: every answer comes.
#[tokio::test]
async fn gets_given_back_and_got_again_wait_for_the_client_to_read() {
    const PAIRS: usize = 300;
    const BODY_BYTES: usize = 1 << 20;
    let broker = Broker::start().await;
    let (_conn, ch) = broker.channel().await;
    within(ch.queue_declare("big".into(), Default::default(), FieldTable::default()))
        .await
        .unwrap();
    fill(&ch, "big", 1, BODY_BYTES).await;
    let memory = &broker.server.as_ref().unwrap().broker().memory;
    let before = memory.used();

    let mut raw = broker.raw().await;
    raw.handshake().await;
    raw.open_channel(1).await;
    let get = encode(&AMQPFrame::Method(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Get(basic::Get {
            queue: "big".into(),
            no_ack: false,
        })),
    ));
    let recover = encode(&AMQPFrame::Method(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Recover(basic::Recover { requeue: true })),
    ));
    let burst: Vec<u8> = std::iter::repeat_n([get, recover].concat(), PAIRS)
        .flatten()
        .collect();
    raw.send(&burst).await;

    let mut most = 0;
    let (mut got, mut recovered) = (0, 0);
    while recovered < PAIRS {
        match raw.recv().await.expect("the broker answers") {
            AMQPFrame::Method(1, AMQPClass::Basic(basic::AMQPMethod::GetOk(_))) => got += 1,
            AMQPFrame::Method(1, AMQPClass::Basic(basic::AMQPMethod::RecoverOk(_))) => {
                recovered += 1;
                most = most.max(memory.used().saturating_sub(before));
            }
            AMQPFrame::Method(_, other) => panic!("unexpected {other:?}"),
            _ => {}
        }
    }
    assert_eq!(got, PAIRS);
    assert!(
        most < 32 << 20,
        "the broker accounted {} MiB more while the client read",
        most >> 20
    );
    witness_works(&broker).await;
}

/// An ack that settles nothing (tag 0 with multiple, on a channel holding no deliveries),
/// sent over and over inside a transaction: each was kept until the commit, so 21 bytes of
/// input grew the broker by more than that, unaccounted, for as long as the client kept on.
/// A settle that takes nothing is dropped now, and a run of settles of one kind is kept as
/// one, as RabbitMQ's `ack_cons` keeps them; the commit still answers.
#[tokio::test]
async fn acks_of_nothing_in_a_transaction_are_not_kept() {
    use amq_protocol::protocol::tx;
    const ACKS_PER_WRITE: usize = 100_000;
    let dir = temp_dir("hostile-tx-acks");
    let broker = Process::start(&[], &dir);
    let mut raw = RawClient::connect(broker.addr).await;
    raw.handshake().await;
    raw.open_channel(1).await;
    raw.tx_select(1).await;
    let before = broker.rss_bytes();
    let ack = encode(&AMQPFrame::Method(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
            delivery_tag: 0,
            multiple: true,
        })),
    ));
    let burst: Vec<u8> = std::iter::repeat_n(ack, ACKS_PER_WRITE).flatten().collect();
    for _ in 0..20 {
        raw.send(&burst).await;
    }
    // Answered once every ack before it was handled (and the transaction still holds them).
    raw.send_method(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
            prefetch_count: 10,
            ..Default::default()
        })),
    )
    .await;
    let (_, ok) = raw.recv_method().await.expect("basic.qos-ok");
    assert!(matches!(ok, AMQPClass::Basic(basic::AMQPMethod::QosOk(_))));
    let grown = broker.rss_bytes().saturating_sub(before);
    raw.send_method(1, AMQPClass::Tx(tx::AMQPMethod::Commit(tx::Commit {})))
        .await;
    let (_, ok) = raw.recv_method().await.expect("tx.commit-ok");
    assert!(matches!(ok, AMQPClass::Tx(tx::AMQPMethod::CommitOk(_))));
    assert!(
        grown < 24 << 20,
        "2,000,000 acks of nothing grew the broker by {} MiB",
        grown >> 20
    );
    drop(broker);
    let _ = std::fs::remove_dir_all(dir);
}

/// A body longer than its header announced never completes (the next method is refused, as
/// RabbitMQ does), and nothing more is kept meanwhile: what was received before it ran over
/// is no longer counted either. It stayed charged to the memory gauge, on every channel
/// doing so, for as long as the client went on sending body frames.
#[tokio::test]
async fn a_body_longer_than_announced_is_no_longer_counted() {
    const CHANNELS: u16 = 50;
    const ANNOUNCED: usize = 898_000;
    // Small frames, which are copied together as they come.
    const FRAME: usize = 4_000;
    let broker = Broker::start().await;
    let (_conn, ch) = broker.channel().await;
    within(ch.queue_declare("q".into(), Default::default(), FieldTable::default()))
        .await
        .unwrap();
    let memory = &broker.server.as_ref().unwrap().broker().memory;
    let before = memory.used();
    let mut raw = broker.raw().await;
    raw.handshake().await;
    for id in 1..=CHANNELS {
        raw.open_channel(id).await;
        raw.start_publish(id, "q", ANNOUNCED as u64).await;
        // All but the last 2 KB of the body, then a frame past its end.
        for _ in 0..(ANNOUNCED / FRAME) {
            raw.send_frame(AMQPFrame::Body(id, vec![b'x'; FRAME])).await;
        }
        raw.send_frame(AMQPFrame::Body(id, vec![b'x'; FRAME])).await;
    }
    // Answered once everything before it was handled.
    raw.open_channel(CHANNELS + 1).await;
    let held = memory.used().saturating_sub(before);
    assert!(
        held < 16 << 20,
        "{CHANNELS} bodies run past their end hold {} MiB",
        held >> 20
    );
    witness_works(&broker).await;
}

/// A route a client built to cost seconds: 4,096 topic bindings mixing `a` and `*` over their
/// first twelve words keep 4,096 trie states alive for each later word of a 64-word key, and
/// a publish carries eight such keys in CC (a million states, and a thousand keys would be
/// a hundred times that, on a runtime worker and under the exchange's lock, which binds wait
/// for while holding the vhost's topology). The route is refused past its budget: the
/// publishing channel is closed, and the same publish without the CC keys still routes.
#[tokio::test]
async fn a_topic_route_past_its_budget_is_refused_not_run_for_seconds() {
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    within(ch.queue_declare("wide".into(), Default::default(), FieldTable::default()))
        .await
        .unwrap();
    let tail = vec!["*"; 52].join(".");
    for i in 0..4096u32 {
        let head: Vec<&str> = (0..12)
            .map(|bit| if i >> bit & 1 == 1 { "*" } else { "a" })
            .collect();
        within(ch.queue_bind(
            "wide".into(),
            "amq.topic".into(),
            format!("{}.{tail}", head.join(".")).as_str().into(),
            QueueBindOptions { nowait: true },
            FieldTable::default(),
        ))
        .await
        .unwrap();
    }
    assert_eq!(ready(&ch, "wide").await, 0);
    let key = vec!["a"; 64].join(".");
    // One key: some 220,000 states, within the budget; one copy however many bindings match.
    publish_with(&ch, "amq.topic", &key, FieldTable::default()).await;
    assert_eq!(ready(&ch, "wide").await, 1);
    let cc: Vec<AMQPValue> = (0..8)
        .map(|i| long_str(&format!("{}.{i}", vec!["a"; 63].join("."))))
        .collect();
    let headers = table(&[("CC", AMQPValue::FieldArray(cc.into()))]);
    let publisher = broker.connect().await;
    let refused = within(publisher.create_channel()).await.unwrap();
    within(refused.confirm_select(Default::default()))
        .await
        .unwrap();
    assert_publish_refused(
        &refused,
        "amq.topic",
        &key,
        b"m",
        lapin::BasicProperties::default().with_headers(headers),
        406,
        "PRECONDITION_FAILED - routing a message through exchange 'amq.topic' in vhost '/' passes more than 1048576 topic binding states",
    )
    .await;
    assert_eq!(ready(&ch, "wide").await, 1, "nothing more was routed");
}

/// Regression (from review): a headers exchange looks at every binding's arguments for
/// every message, and nothing bounded that: bindings of 4,095 arguments each, a few hundred
/// of them, made each publish cost a million comparisons on a runtime worker. Their cost is
/// now kept within a route's budget when they are made: the binding past it is refused,
/// and publishes go on.
#[tokio::test]
async fn a_headers_binding_past_a_routes_budget_is_refused() {
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    within(ch.queue_declare("matched".into(), Default::default(), FieldTable::default()))
        .await
        .unwrap();
    let mut args = FieldTable::default();
    args.insert("x-match".into(), long_str("any"));
    for i in 0..4094 {
        args.insert(format!("k{i}").as_str().into(), AMQPValue::Void);
    }
    // 256 bindings of 4,094 arguments cost 1,048,320 of the 1,048,576.
    for i in 0..256u32 {
        within(ch.queue_bind(
            "matched".into(),
            "amq.headers".into(),
            format!("b{i}").as_str().into(),
            QueueBindOptions { nowait: true },
            args.clone(),
        ))
        .await
        .unwrap();
    }
    assert_eq!(ready(&ch, "matched").await, 0, "every binding is made");
    let (_c2, refused) = broker.channel().await;
    assert_amqp_error(
        within(refused.queue_bind(
            "matched".into(),
            "amq.headers".into(),
            "one-too-many".into(),
            QueueBindOptions::default(),
            args.clone(),
        ))
        .await,
        406,
        "PRECONDITION_FAILED - cannot bind to exchange 'amq.headers' in vhost '/': matching its headers bindings would take more than 1048576 steps (one per binding and per argument matched)",
    );
    publish_with(&ch, "amq.headers", "", table(&[("k1", long_str("x"))])).await;
    assert_eq!(
        ready(&ch, "matched").await,
        1,
        "the exchange routes as before"
    );
}

/// Connections from one address that have not opened yet (no header, no login) are capped:
/// idle ones, each held for the handshake's timeout and reopened, took every place the
/// broker has. Past the cap a connection from that address is closed at once; one that
/// opens gives its place back, and other addresses are not affected.
#[tokio::test]
async fn one_address_holds_only_so_many_connections_that_have_not_opened() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut config = Config::for_tests();
    config.limits.max_unopened_connections_per_address = 2;
    let broker = Broker::start_with(config).await;
    // Whether the broker answers a protocol header on a new connection (Connection.Start),
    // or closes it unanswered.
    let answered = |addr| async move {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let _ = s.write_all(b"AMQP\x00\x00\x09\x01").await;
        let mut buf = [0u8; 8];
        let n = within(s.read(&mut buf)).await.unwrap_or(0);
        (n > 0, s)
    };
    let idle_a = tokio::net::TcpStream::connect(broker.addr).await.unwrap();
    let (first, _waiting) = answered(broker.addr).await;
    assert!(first, "the second unopened connection is served");
    let (third, _) = answered(broker.addr).await;
    assert!(!third, "a third from the same address is closed unanswered");
    // Another address (the whole of 127/8 is this host's) is served meanwhile.
    let other = tokio::net::TcpSocket::new_v4().unwrap();
    other.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut other = other.connect(broker.addr).await.unwrap();
    other.write_all(b"AMQP\x00\x00\x09\x01").await.unwrap();
    let mut buf = [0u8; 8];
    assert!(
        within(other.read(&mut buf)).await.unwrap() > 0,
        "another address is served"
    );

    // One goes: a client gets in, and once it has opened it no longer counts.
    drop(idle_a);
    let conn = within(async {
        loop {
            if let Ok(c) =
                lapin::Connection::connect(&broker.uri(), lapin::ConnectionProperties::default())
                    .await
            {
                return c;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    let (after_open, _) = answered(broker.addr).await;
    assert!(after_open, "the opened connection gave its place back");
    assert!(conn.status().connected());
}
