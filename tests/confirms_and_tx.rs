//! Publisher confirms and transactions.

mod common;

use common::*;
use futures_lite::StreamExt;
use lapin::Channel;
use lapin::options::*;
use lapin::types::FieldTable;

async fn queue(ch: &Channel, name: &str) {
    within(ch.queue_declare(name.into(), Default::default(), FieldTable::default()))
        .await
        .expect("declared");
}

async fn ready(ch: &Channel, name: &str) -> u32 {
    within(ch.queue_declare(
        name.into(),
        QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    ))
    .await
    .expect("exists")
    .message_count()
}

#[tokio::test]
async fn every_publish_is_confirmed() {
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    queue(&ch, "c").await;
    within(ch.confirm_select(Default::default())).await.unwrap();
    let mut pending = Vec::new();
    for i in 0..1000 {
        pending.push(
            within(ch.basic_publish(
                "".into(),
                "c".into(),
                Default::default(),
                format!("{i}").as_bytes(),
                Default::default(),
            ))
            .await
            .unwrap(),
        );
    }
    for p in pending {
        assert!(within(p).await.unwrap().is_ack());
    }
    assert_eq!(ready(&ch, "c").await, 1000);
}

#[tokio::test]
async fn confirms_are_numbered_from_one_and_may_be_batched() {
    let broker = Broker::start().await;
    let mut raw = broker.raw().await;
    raw.handshake().await;
    raw.open_channel(1).await;
    use amq_protocol::protocol::{AMQPClass, basic, confirm};
    raw.send_method(
        1,
        AMQPClass::Confirm(confirm::AMQPMethod::Select(confirm::Select {
            nowait: false,
        })),
    )
    .await;
    raw.recv_method().await.expect("select-ok");
    // Three publishes in one write: the broker may confirm them with one multiple ack.
    let mut bytes = Vec::new();
    for _ in 0..3 {
        bytes.extend(encode(&amq_protocol::frame::AMQPFrame::Method(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
                exchange: "".into(),
                routing_key: "nowhere".into(),
                mandatory: false,
                immediate: false,
            })),
        )));
        bytes.extend(raw_frame(
            2,
            1,
            &[0, 60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        ));
    }
    raw.send(&bytes).await;
    let mut confirmed = 0;
    while confirmed < 3 {
        match raw.recv_method().await {
            Some((1, AMQPClass::Basic(basic::AMQPMethod::Ack(ack)))) => {
                assert!(ack.delivery_tag > confirmed);
                confirmed = ack.delivery_tag;
                if !ack.multiple {
                    continue;
                }
            }
            other => panic!("expected basic.ack, got {other:?}"),
        }
    }
    assert_eq!(confirmed, 3);
}

#[tokio::test]
async fn same_as_rabbitmq_tx_and_confirm_do_not_mix() {
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    within(ch.tx_select()).await.unwrap();
    assert_amqp_error(
        within(ch.confirm_select(Default::default())).await,
        406,
        "PRECONDITION_FAILED - cannot switch from tx to confirm mode",
    );
    let (_c, ch) = broker.channel().await;
    within(ch.confirm_select(Default::default())).await.unwrap();
    assert_amqp_error(
        within(ch.tx_select()).await,
        406,
        "PRECONDITION_FAILED - cannot switch from confirm to tx mode",
    );
}

#[tokio::test]
async fn same_as_rabbitmq_commit_without_select_is_refused() {
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    assert_amqp_error(
        within(ch.tx_commit()).await,
        406,
        "PRECONDITION_FAILED - channel is not transactional",
    );
    let (_c, ch) = broker.channel().await;
    assert_amqp_error(
        within(ch.tx_rollback()).await,
        406,
        "PRECONDITION_FAILED - channel is not transactional",
    );
}

#[tokio::test]
async fn transactional_publishes_appear_on_commit_and_vanish_on_rollback() {
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    queue(&ch, "txq").await;
    within(ch.tx_select()).await.unwrap();
    for body in [&b"a"[..], b"b"] {
        within(ch.basic_publish(
            "".into(),
            "txq".into(),
            Default::default(),
            body,
            Default::default(),
        ))
        .await
        .unwrap();
    }
    assert_eq!(ready(&ch, "txq").await, 0, "nothing before commit");
    within(ch.tx_commit()).await.unwrap();
    assert_eq!(ready(&ch, "txq").await, 2);
    within(ch.basic_publish(
        "".into(),
        "txq".into(),
        Default::default(),
        b"c",
        Default::default(),
    ))
    .await
    .unwrap();
    within(ch.tx_rollback()).await.unwrap();
    within(ch.tx_commit()).await.unwrap();
    assert_eq!(
        ready(&ch, "txq").await,
        2,
        "the rolled back publish is gone"
    );
}

#[tokio::test]
async fn transactional_acks_apply_on_commit_and_return_on_rollback() {
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    queue(&ch, "txa").await;
    for body in [&b"1"[..], b"2"] {
        within(ch.basic_publish(
            "".into(),
            "txa".into(),
            Default::default(),
            body,
            Default::default(),
        ))
        .await
        .unwrap();
    }
    within(ch.tx_select()).await.unwrap();
    let mut consumer = within(ch.basic_consume(
        "txa".into(),
        "c".into(),
        Default::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    let first = within(consumer.next()).await.unwrap().unwrap();
    let second = within(consumer.next()).await.unwrap().unwrap();
    within(first.ack(Default::default())).await.unwrap();
    within(ch.tx_rollback()).await.unwrap();
    // The ack was taken back: the same tag can be acked again, and now it counts.
    within(ch.basic_ack(first.delivery_tag, Default::default()))
        .await
        .unwrap();
    within(second.ack(Default::default())).await.unwrap();
    within(ch.tx_commit()).await.unwrap();
    within(ch.basic_cancel("c".into(), Default::default()))
        .await
        .unwrap();
    within(ch.basic_recover(BasicRecoverOptions { requeue: true }))
        .await
        .unwrap();
    within(ch.tx_commit()).await.unwrap();
    assert_eq!(ready(&ch, "txa").await, 0, "both acks were committed");
}

#[tokio::test]
async fn same_as_rabbitmq_mandatory_returns_in_a_transaction_come_with_the_commit() {
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    within(ch.tx_select()).await.unwrap();
    within(ch.basic_publish(
        "".into(),
        "nowhere".into(),
        BasicPublishOptions {
            mandatory: true,
            ..Default::default()
        },
        b"x",
        Default::default(),
    ))
    .await
    .unwrap();
    within(ch.tx_commit()).await.unwrap();
}

/// Closing a channel with an open transaction rolls it back, as RabbitMQ does: an ack made
/// in it is undone, so the message is requeued with the channel's other unacked deliveries.
#[tokio::test]
async fn same_as_rabbitmq_closing_a_channel_rolls_back_the_acks_of_its_transaction() {
    let broker = Broker::start().await;
    let (conn, ch) = broker.channel().await;
    queue(&ch, "txc").await;
    for body in [&b"m1"[..], b"m2"] {
        within(ch.basic_publish(
            "".into(),
            "txc".into(),
            Default::default(),
            body,
            Default::default(),
        ))
        .await
        .unwrap();
    }
    let tx = within(conn.create_channel()).await.unwrap();
    within(tx.tx_select()).await.unwrap();
    let m1 = within(tx.basic_get("txc".into(), Default::default()))
        .await
        .unwrap()
        .expect("m1");
    within(tx.basic_ack(m1.delivery.delivery_tag, Default::default()))
        .await
        .unwrap();
    let m2 = within(tx.basic_get("txc".into(), Default::default()))
        .await
        .unwrap()
        .expect("m2");
    assert_eq!(&m2.delivery.data[..], b"m2");
    within(tx.close(200, "bye".into())).await.unwrap();
    assert_eq!(ready(&ch, "txc").await, 2, "both messages are ready again");
}

/// Same as RabbitMQ: a publish held by a transaction is routed at commit as it would have
/// been at once, by its headers on a headers exchange and by its BCC keys, which the
/// message delivered no longer shows. (The transaction no longer keeps the headers decoded
/// until then; the commit reads them from the message.)
#[tokio::test]
async fn a_committed_publish_routes_by_its_headers_and_bcc_keys() {
    use lapin::types::{AMQPValue, FieldArray};
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    for q in ["matched", "bcc"] {
        within(ch.queue_declare(q.into(), Default::default(), FieldTable::default()))
            .await
            .unwrap();
    }
    let mut match_args = FieldTable::default();
    match_args.insert("kind".into(), AMQPValue::LongString("order".into()));
    within(ch.queue_bind(
        "matched".into(),
        "amq.headers".into(),
        "".into(),
        QueueBindOptions::default(),
        match_args,
    ))
    .await
    .unwrap();
    within(ch.queue_bind(
        "bcc".into(),
        "amq.direct".into(),
        "hidden".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    within(ch.tx_select()).await.unwrap();
    let mut headers = FieldTable::default();
    headers.insert("kind".into(), AMQPValue::LongString("order".into()));
    let bcc = FieldArray::from(vec![AMQPValue::LongString("hidden".into())]);
    headers.insert("BCC".into(), AMQPValue::FieldArray(bcc));
    let properties = lapin::BasicProperties::default().with_headers(headers);
    for exchange in ["amq.headers", "amq.direct"] {
        within(ch.basic_publish(
            exchange.into(),
            "none".into(),
            BasicPublishOptions::default(),
            b"m",
            properties.clone(),
        ))
        .await
        .unwrap();
    }
    assert_eq!(message_count(&ch, "matched").await, 0, "held until commit");
    within(ch.tx_commit()).await.unwrap();
    assert_eq!(message_count(&ch, "matched").await, 1);
    let m = get_eventually(&ch, "bcc").await;
    let shown = m.properties.headers().clone().unwrap_or_default();
    assert!(shown.inner().contains_key("kind"));
    assert!(!shown.inner().contains_key("BCC"), "BCC is not delivered");
}

/// Same as RabbitMQ, which sends the confirms a method resolved before anything that
/// follows it, and none on a closing channel: the ack of an unroutable publish comes before
/// the Channel.Close an error on the same channel causes, and nothing comes after it. The
/// ack used to follow the close: amqp091-go closes the whole connection on a method for a
/// channel it has closed.
#[tokio::test]
async fn same_as_rabbitmq_no_confirm_follows_a_channel_close() {
    use amq_protocol::protocol::{AMQPClass, basic, channel, confirm, queue};
    let broker = Broker::start().await;
    let mut raw = broker.raw().await;
    raw.handshake().await;
    raw.open_channel(1).await;
    raw.send_method(
        1,
        AMQPClass::Confirm(confirm::AMQPMethod::Select(confirm::Select {
            nowait: false,
        })),
    )
    .await;
    assert!(matches!(
        raw.recv_method().await,
        Some((1, AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(_))))
    ));
    let mut one_write = publish_frames("nowhere");
    one_write.extend(encode(&amq_protocol::frame::AMQPFrame::Method(
        1,
        AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
            queue: "missing".into(),
            passive: true,
            durable: false,
            exclusive: false,
            auto_delete: false,
            nowait: false,
            arguments: FieldTable::default(),
        })),
    )));
    raw.send(&one_write).await;
    assert!(matches!(
        raw.recv_method().await,
        Some((
            1,
            AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
                delivery_tag: 1,
                ..
            }))
        ))
    ));
    assert!(matches!(
        raw.recv_method().await,
        Some((1, AMQPClass::Channel(channel::AMQPMethod::Close(_))))
    ));
    // Close-Ok, then a round trip on another channel: nothing came for channel 1 meanwhile.
    raw.send_method(
        1,
        AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
    )
    .await;
    raw.open_channel(2).await;
}

/// Same as RabbitMQ 3.10 (checked on a node): a transaction whose message a full queue
/// refused (`reject-publish`) did not complete, and its commit says so (406). Before, the
/// commit said ok though no queue held the message.
#[tokio::test]
async fn same_as_rabbitmq_a_commit_a_full_queue_refused_is_a_partial_completion() {
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    within(ch.queue_declare(
        "full".into(),
        Default::default(),
        table(&[
            ("x-max-length", lapin::types::AMQPValue::LongInt(1)),
            ("x-overflow", long_str("reject-publish")),
        ]),
    ))
    .await
    .unwrap();
    let publish = |body: &'static [u8]| {
        ch.basic_publish(
            "".into(),
            "full".into(),
            Default::default(),
            body,
            Default::default(),
        )
    };
    within(publish(b"1")).await.unwrap();
    within(ch.tx_select()).await.unwrap();
    within(publish(b"2")).await.unwrap();
    assert_amqp_error(
        within(ch.tx_commit()).await,
        406,
        "PRECONDITION_FAILED - partial tx completion",
    );
}

/// Same as RabbitMQ 3.10 (checked on a node): a transaction's publish is routed when it is
/// published and enqueued at commit, so deleting its exchange in between loses nothing.
/// Before, the commit routed it again, found no exchange, and dropped it silently.
#[tokio::test]
async fn same_as_rabbitmq_a_transaction_routes_at_publish() {
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    queue(&ch, "kept").await;
    within(ch.exchange_declare(
        "soon-gone".into(),
        lapin::ExchangeKind::Fanout,
        Default::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    within(ch.queue_bind(
        "kept".into(),
        "soon-gone".into(),
        "".into(),
        Default::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    within(ch.tx_select()).await.unwrap();
    within(ch.basic_publish(
        "soon-gone".into(),
        "k".into(),
        BasicPublishOptions {
            mandatory: true,
            ..Default::default()
        },
        b"routed already",
        Default::default(),
    ))
    .await
    .unwrap();
    let (_c2, other) = broker.channel().await;
    within(other.exchange_delete("soon-gone".into(), Default::default()))
        .await
        .unwrap();
    within(ch.tx_commit()).await.unwrap();
    assert_eq!(ready(&other, "kept").await, 1);
}

/// A commit of many publishes is enqueued a batch (4,096) per turn of its connection's
/// task: the messages all arrive, in order, before commit-ok, and what the client sent
/// after tx.commit is handled after it.
#[tokio::test]
async fn a_large_commit_enqueues_everything_in_order_and_what_follows_comes_after() {
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    queue(&ch, "big-tx").await;
    within(ch.tx_select()).await.unwrap();
    for i in 0..20_000u32 {
        let body = i.to_be_bytes();
        within(ch.basic_publish(
            "".into(),
            "big-tx".into(),
            Default::default(),
            &body,
            Default::default(),
        ))
        .await
        .unwrap();
    }
    // Sent right behind tx.commit, before its commit-ok comes back.
    let commit = ch.tx_commit();
    let count = ready(&ch, "big-tx");
    within(commit).await.expect("commit-ok");
    assert_eq!(
        count.await,
        20_000,
        "the passive declare after the commit sees all of it"
    );
    let (_d, reader) = broker.channel().await;
    for i in 0..20_000u32 {
        let got = within(reader.basic_get("big-tx".into(), BasicGetOptions { no_ack: true }))
            .await
            .unwrap()
            .expect("a message");
        assert_eq!(got.delivery.data, i.to_be_bytes(), "in publish order");
    }
}

/// Regression: a commit of up to a million publishes ran in one go and kept the runtime
/// worker until it was done: on a single-threaded runtime, no other connection was
/// answered in the meantime. Now the connection yields between batches, and another
/// client's requests are answered while the commit goes on.
#[tokio::test(flavor = "current_thread")]
async fn other_connections_are_answered_while_a_large_commit_goes_on() {
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    queue(&ch, "big-tx").await;
    within(ch.tx_select()).await.unwrap();
    for _ in 0..200_000u32 {
        within(ch.basic_publish(
            "".into(),
            "big-tx".into(),
            Default::default(),
            b"x",
            Default::default(),
        ))
        .await
        .unwrap();
    }
    let (_o, other) = broker.channel().await;
    queue(&other, "other").await;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let committed = {
        let done = done.clone();
        tokio::spawn(async move {
            within(ch.tx_commit()).await.expect("commit-ok");
            done.store(true, std::sync::atomic::Ordering::SeqCst);
        })
    };
    // Round trips of another connection, counted until the commit-ok arrives.
    let mut answered = 0;
    while !done.load(std::sync::atomic::Ordering::SeqCst) {
        ready(&other, "other").await;
        answered += 1;
    }
    committed.await.unwrap();
    assert!(
        answered >= 5,
        "another connection was answered {answered} times during the commit"
    );
}
