//! Queues: declare, bind, purge, delete, exclusivity, auto-delete, argument equivalence.

mod common;

use amq_protocol::types::AMQPValue;
use common::*;
use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{Channel, ExchangeKind};

fn passive() -> QueueDeclareOptions {
    QueueDeclareOptions {
        passive: true,
        ..Default::default()
    }
}

async fn declare(
    ch: &Channel,
    name: &str,
    options: QueueDeclareOptions,
    args: FieldTable,
) -> lapin::Queue {
    within(ch.queue_declare(name.into(), options, args))
        .await
        .expect("declared")
}

async fn put(ch: &Channel, queue: &str, n: usize) {
    for i in 0..n {
        within(ch.basic_publish(
            "".into(),
            queue.into(),
            Default::default(),
            format!("m{i}").as_bytes(),
            Default::default(),
        ))
        .await
        .expect("published");
    }
}

/// Waits until the queue holds `n` ready messages.
async fn until_count(ch: &Channel, queue: &str, n: u32) {
    within(async {
        loop {
            let q = ch
                .queue_declare(queue.into(), passive(), FieldTable::default())
                .await
                .expect("exists");
            if q.message_count() == n {
                return;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
}

#[tokio::test]
async fn same_as_rabbitmq_server_named_queues_look_like_amq_gen() {
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    let q = declare(
        &ch,
        "",
        QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await;
    let name = q.name().as_str();
    assert!(name.starts_with("amq.gen-"), "{name}");
    assert_eq!(name.len(), "amq.gen-".len() + 22);
    assert!(
        name["amq.gen-".len()..]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    );
}

#[tokio::test]
async fn same_as_rabbitmq_queue_names_starting_with_amq_are_reserved() {
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    assert_amqp_error(
        within(ch.queue_declare("amq.mine".into(), Default::default(), FieldTable::default()))
            .await,
        403,
        "ACCESS_REFUSED - queue name 'amq.mine' contains reserved prefix 'amq.*'",
    );
}

#[tokio::test]
async fn same_as_rabbitmq_declare_ok_counts_ready_messages_and_consumers() {
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    declare(&ch, "counted", Default::default(), FieldTable::default()).await;
    put(&ch, "counted", 3).await;
    until_count(&ch, "counted", 3).await;
    // One message delivered and unacked no longer counts.
    let got = within(ch.basic_get("counted".into(), Default::default()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.message_count, 2);
    let _consumer = within(ch.basic_consume(
        "counted".into(),
        "c1".into(),
        BasicConsumeOptions::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    let (_c2, ch2) = broker.channel().await;
    let q = declare(&ch2, "counted", passive(), FieldTable::default()).await;
    assert_eq!(q.consumer_count(), 1);
}

#[tokio::test]
async fn same_as_rabbitmq_passive_declare_of_a_missing_queue_is_404() {
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    assert_amqp_error(
        within(ch.queue_declare("nope".into(), passive(), FieldTable::default())).await,
        404,
        "NOT_FOUND - no queue 'nope' in vhost '/'",
    );
}

#[tokio::test]
async fn same_as_rabbitmq_redeclare_checks_durable_auto_delete_and_known_arguments() {
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    declare(
        &ch,
        "q",
        Default::default(),
        table(&[("x-message-ttl", AMQPValue::LongInt(1000))]),
    )
    .await;
    let cases: Vec<(QueueDeclareOptions, FieldTable, &str)> = vec![
        (
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            table(&[("x-message-ttl", AMQPValue::LongInt(1000))]),
            "PRECONDITION_FAILED - inequivalent arg 'durable' for queue 'q' in vhost '/': received 'true' but current is 'false'",
        ),
        (
            QueueDeclareOptions {
                auto_delete: true,
                ..Default::default()
            },
            table(&[("x-message-ttl", AMQPValue::LongInt(1000))]),
            "PRECONDITION_FAILED - inequivalent arg 'auto_delete' for queue 'q' in vhost '/': received 'true' but current is 'false'",
        ),
        (
            Default::default(),
            table(&[("x-message-ttl", AMQPValue::LongInt(2000))]),
            "PRECONDITION_FAILED - inequivalent arg 'x-message-ttl' for queue 'q' in vhost '/': received '2000' but current is '1000'",
        ),
        (
            Default::default(),
            FieldTable::default(),
            "PRECONDITION_FAILED - inequivalent arg 'x-message-ttl' for queue 'q' in vhost '/': received none but current is the value '1000' of type 'signedint'",
        ),
    ];
    for (options, args, text) in cases {
        let (_c, ch) = broker.channel().await;
        assert_amqp_error(
            within(ch.queue_declare("q".into(), options, args)).await,
            406,
            text,
        );
    }
    // The same value in another integer type, and unknown arguments, are equivalent.
    let (_c, ch) = broker.channel().await;
    declare(
        &ch,
        "q",
        Default::default(),
        table(&[
            ("x-message-ttl", AMQPValue::LongLongInt(1000)),
            ("x-unknown", AMQPValue::Boolean(true)),
        ]),
    )
    .await;
}

#[tokio::test]
async fn same_as_rabbitmq_invalid_arguments_are_refused_on_create() {
    let broker = Broker::start().await;
    let cases = [
        ("x-expires", AMQPValue::LongInt(0), "{value_zero,0}"),
        (
            "x-message-ttl",
            AMQPValue::LongInt(-1),
            "{value_negative,-1}",
        ),
        (
            "x-max-length",
            long_str("5"),
            "\"expected integer, got longstr\"",
        ),
        (
            "x-max-priority",
            AMQPValue::LongInt(256),
            "{max_value_exceeded,256}",
        ),
        ("x-overflow", long_str("explode"), "invalid_overflow"),
    ];
    for (key, value, reason) in cases {
        let (_c, ch) = broker.channel().await;
        assert_amqp_error(
            within(ch.queue_declare("bad".into(), Default::default(), table(&[(key, value)])))
                .await,
            406,
            &format!(
                "PRECONDITION_FAILED - invalid arg '{key}' for queue 'bad' in vhost '/': {reason}"
            ),
        );
    }
}

#[tokio::test]
async fn same_as_rabbitmq_exclusive_queues_belong_to_their_connection() {
    let broker = Broker::start().await;
    let (owner, ch) = broker.channel().await;
    declare(
        &ch,
        "mine",
        QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await;
    let locked = "RESOURCE_LOCKED - cannot obtain exclusive access to locked queue 'mine' in vhost '/'. It could be originally declared on another connection or the exclusive property value does not match that of the original declaration.";
    let (_other, ch2) = broker.channel().await;
    assert_amqp_error(
        within(ch2.queue_declare("mine".into(), passive(), FieldTable::default())).await,
        405,
        locked,
    );
    let ch2 = within(_other.create_channel()).await.unwrap();
    assert_amqp_error(
        within(ch2.basic_consume(
            "mine".into(),
            "".into(),
            Default::default(),
            FieldTable::default(),
        ))
        .await,
        405,
        locked,
    );
    // Unbinding what is not bound succeeds (checked on RabbitMQ 3.10: only a binding that
    // exists meets the exclusivity check); an existing binding is locked.
    let ch2 = within(_other.create_channel()).await.unwrap();
    within(ch2.queue_unbind(
        "mine".into(),
        "amq.direct".into(),
        "never-bound".into(),
        FieldTable::default(),
    ))
    .await
    .expect("unbind-ok");
    within(ch.queue_bind(
        "mine".into(),
        "amq.direct".into(),
        "bound".into(),
        Default::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    assert_amqp_error(
        within(ch2.queue_unbind(
            "mine".into(),
            "amq.direct".into(),
            "bound".into(),
            FieldTable::default(),
        ))
        .await,
        405,
        locked,
    );
    // Other connections may still publish to it.
    let ch2 = within(_other.create_channel()).await.unwrap();
    put(&ch2, "mine", 1).await;
    until_count(&ch, "mine", 1).await;
    // The queue goes with its connection.
    within(owner.close(200, "bye".into())).await.unwrap();
    let ch2 = within(_other.create_channel()).await.unwrap();
    within(async {
        loop {
            if ch2
                .queue_declare("mine".into(), passive(), FieldTable::default())
                .await
                .is_err()
            {
                return;
            }
        }
    })
    .await;
}

/// A connection's exclusive queues are now found by name at its close, not by a pass over
/// every queue (from review): a name it once owned, deleted and taken since by another
/// connection's queue, is not deleted with it, and those it still owns are.
#[tokio::test]
async fn a_closing_connection_deletes_only_the_exclusive_queues_it_still_owns() {
    let broker = Broker::start().await;
    let exclusive = QueueDeclareOptions {
        exclusive: true,
        ..Default::default()
    };
    let (first, ch) = broker.channel().await;
    declare(&ch, "was-mine", exclusive, FieldTable::default()).await;
    declare(&ch, "still-mine", exclusive, FieldTable::default()).await;
    within(ch.queue_delete("was-mine".into(), Default::default()))
        .await
        .unwrap();
    let (_second, ch2) = broker.channel().await;
    declare(&ch2, "was-mine", exclusive, FieldTable::default()).await;
    within(first.close(200, "bye".into())).await.unwrap();
    // The close is done once the queue it owned is gone.
    within(async {
        loop {
            let (_c, ch) = broker.channel().await;
            let declared = ch.queue_declare("still-mine".into(), passive(), FieldTable::default());
            if let Err(e) = declared.await {
                assert_eq!(common::amqp_error(&e).map(|(code, _)| code), Some(404));
                return;
            }
        }
    })
    .await;
    let kept = ch2.queue_declare("was-mine".into(), passive(), FieldTable::default());
    assert!(
        within(kept).await.is_ok(),
        "the other connection's queue stays"
    );
}

#[tokio::test]
async fn same_as_rabbitmq_auto_delete_queues_go_with_their_last_consumer() {
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    declare(
        &ch,
        "ad",
        QueueDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await;
    // A queue that never had a consumer stays.
    put(&ch, "ad", 1).await;
    declare(&ch, "ad", passive(), FieldTable::default()).await;
    let c1 = within(ch.basic_consume(
        "ad".into(),
        "one".into(),
        Default::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    let c2 = within(ch.basic_consume(
        "ad".into(),
        "two".into(),
        Default::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    within(ch.basic_cancel(c1.tag(), Default::default()))
        .await
        .unwrap();
    declare(&ch, "ad", passive(), FieldTable::default()).await;
    within(ch.basic_cancel(c2.tag(), Default::default()))
        .await
        .unwrap();
    assert_amqp_error(
        within(ch.queue_declare("ad".into(), passive(), FieldTable::default())).await,
        404,
        "NOT_FOUND - no queue 'ad' in vhost '/'",
    );
}

#[tokio::test]
async fn bind_unbind_and_purge() {
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    within(ch.exchange_declare(
        "bx".into(),
        ExchangeKind::Direct,
        Default::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    declare(&ch, "bq", Default::default(), FieldTable::default()).await;
    within(ch.queue_bind(
        "bq".into(),
        "bx".into(),
        "k".into(),
        Default::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    // Binding twice is not an error.
    within(ch.queue_bind(
        "bq".into(),
        "bx".into(),
        "k".into(),
        Default::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    for _ in 0..3 {
        within(ch.basic_publish(
            "bx".into(),
            "k".into(),
            Default::default(),
            b"x",
            Default::default(),
        ))
        .await
        .unwrap();
    }
    until_count(&ch, "bq", 3).await;
    assert_eq!(
        within(ch.queue_purge("bq".into(), Default::default()))
            .await
            .unwrap(),
        3
    );
    within(ch.queue_unbind("bq".into(), "bx".into(), "k".into(), FieldTable::default()))
        .await
        .unwrap();
    // Unbinding what is not bound is fine too.
    within(ch.queue_unbind("bq".into(), "bx".into(), "k".into(), FieldTable::default()))
        .await
        .unwrap();
    within(ch.basic_publish(
        "bx".into(),
        "k".into(),
        Default::default(),
        b"x",
        Default::default(),
    ))
    .await
    .unwrap();
    put(&ch, "bq", 1).await;
    until_count(&ch, "bq", 1).await;
}

#[tokio::test]
async fn same_as_rabbitmq_binding_a_missing_queue_or_exchange_is_404() {
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    declare(&ch, "here", Default::default(), FieldTable::default()).await;
    assert_amqp_error(
        within(ch.queue_bind(
            "here".into(),
            "nowhere".into(),
            "".into(),
            Default::default(),
            FieldTable::default(),
        ))
        .await,
        404,
        "NOT_FOUND - no exchange 'nowhere' in vhost '/'",
    );
    let (_c, ch) = broker.channel().await;
    assert_amqp_error(
        within(ch.queue_bind(
            "gone".into(),
            "amq.direct".into(),
            "".into(),
            Default::default(),
            FieldTable::default(),
        ))
        .await,
        404,
        "NOT_FOUND - no queue 'gone' in vhost '/'",
    );
    let (_c, ch) = broker.channel().await;
    assert_amqp_error(
        within(ch.queue_purge("gone".into(), Default::default())).await,
        404,
        "NOT_FOUND - no queue 'gone' in vhost '/'",
    );
}

#[tokio::test]
async fn same_as_rabbitmq_delete_if_empty_and_if_unused() {
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    declare(&ch, "full", Default::default(), FieldTable::default()).await;
    put(&ch, "full", 2).await;
    until_count(&ch, "full", 2).await;
    assert_amqp_error(
        within(ch.queue_delete(
            "full".into(),
            QueueDeleteOptions {
                if_empty: true,
                ..Default::default()
            },
        ))
        .await,
        406,
        "PRECONDITION_FAILED - queue 'full' in vhost '/' not empty",
    );
    let (_c, ch) = broker.channel().await;
    let _consumer = within(ch.basic_consume(
        "full".into(),
        "busy".into(),
        BasicConsumeOptions {
            no_ack: true,
            ..Default::default()
        },
        FieldTable::default(),
    ))
    .await
    .unwrap();
    let (_c2, ch2) = broker.channel().await;
    assert_amqp_error(
        within(ch2.queue_delete(
            "full".into(),
            QueueDeleteOptions {
                if_unused: true,
                ..Default::default()
            },
        ))
        .await,
        406,
        "PRECONDITION_FAILED - queue 'full' in vhost '/' in use",
    );
    // Deleting a missing queue reports zero messages.
    let (_c3, ch3) = broker.channel().await;
    assert_eq!(
        within(ch3.queue_delete("never".into(), Default::default()))
            .await
            .unwrap(),
        0
    );
}

/// Same as RabbitMQ 3.10 (checked on a node): with both conditions and both unmet, the
/// refusal is "not empty" (RabbitMQ checks emptiness first; Lepus said "in use").
#[tokio::test]
async fn same_as_rabbitmq_delete_if_empty_and_if_unused_together_reports_not_empty() {
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    declare(&ch, "both", Default::default(), FieldTable::default()).await;
    put(&ch, "both", 3).await;
    until_count(&ch, "both", 3).await;
    within(ch.basic_qos(1, Default::default())).await.unwrap();
    let _consumer = within(ch.basic_consume(
        "both".into(),
        "holding-one".into(),
        Default::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    until_count(&ch, "both", 2).await;
    let (_c2, ch2) = broker.channel().await;
    assert_amqp_error(
        within(ch2.queue_delete(
            "both".into(),
            QueueDeleteOptions {
                if_unused: true,
                if_empty: true,
                ..Default::default()
            },
        ))
        .await,
        406,
        "PRECONDITION_FAILED - queue 'both' in vhost '/' not empty",
    );
}

#[tokio::test]
async fn same_as_rabbitmq_deleting_a_queue_cancels_its_consumers() {
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    declare(&ch, "doomed", Default::default(), FieldTable::default()).await;
    let mut consumer = within(ch.basic_consume(
        "doomed".into(),
        "watcher".into(),
        BasicConsumeOptions {
            no_ack: true,
            ..Default::default()
        },
        FieldTable::default(),
    ))
    .await
    .unwrap();
    let (_c2, ch2) = broker.channel().await;
    within(ch2.queue_delete("doomed".into(), Default::default()))
        .await
        .unwrap();
    // lapin advertises consumer_cancel_notify: the broker's Basic.Cancel ends the stream.
    let end = within(consumer.next()).await;
    assert!(end.is_none(), "got {end:?}");
    // The channel itself is still usable.
    declare(&ch, "after", Default::default(), FieldTable::default()).await;
}

#[tokio::test]
async fn same_as_rabbitmq_an_empty_queue_name_means_the_last_declared_queue() {
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    let q = declare(
        &ch,
        "",
        QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await;
    within(ch.exchange_declare(
        "lx".into(),
        ExchangeKind::Direct,
        Default::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    // Empty queue and key: both become the last declared queue's name.
    within(ch.queue_bind(
        "".into(),
        "lx".into(),
        "".into(),
        Default::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    within(ch.basic_publish(
        "lx".into(),
        q.name().as_str().into(),
        Default::default(),
        b"x",
        Default::default(),
    ))
    .await
    .unwrap();
    until_count(&ch, q.name().as_str(), 1).await;
    assert_eq!(
        within(ch.queue_purge("".into(), Default::default()))
            .await
            .unwrap(),
        1
    );
    let (_c, fresh) = broker.channel().await;
    assert_amqp_error(
        within(fresh.queue_purge("".into(), Default::default())).await,
        404,
        "NOT_FOUND - no previously declared queue",
    );
}

mod cancel_notification {
    use super::*;
    use amq_protocol::protocol::{AMQPClass, basic, queue};

    async fn consume_then_delete(client_properties: FieldTable) -> Vec<AMQPClass> {
        let broker = Broker::start().await;
        let mut raw = broker.raw().await;
        raw.handshake_with(client_properties, 0).await;
        raw.open_channel(1).await;
        raw.send_method(
            1,
            AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
                queue: "watched".into(),
                passive: false,
                durable: false,
                exclusive: false,
                auto_delete: false,
                nowait: false,
                arguments: FieldTable::default(),
            })),
        )
        .await;
        raw.recv_method().await.expect("declare-ok");
        raw.send_method(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
                queue: "watched".into(),
                consumer_tag: "w".into(),
                no_local: false,
                no_ack: true,
                exclusive: false,
                nowait: false,
                arguments: FieldTable::default(),
            })),
        )
        .await;
        raw.recv_method().await.expect("consume-ok");
        raw.send_method(
            1,
            AMQPClass::Queue(queue::AMQPMethod::Delete(queue::Delete {
                queue: "watched".into(),
                if_unused: false,
                if_empty: false,
                nowait: false,
            })),
        )
        .await;
        // Then ask for something with a reply, to know everything before it has arrived.
        raw.send_method(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
                prefetch_count: 1,
                global: false,
            })),
        )
        .await;
        let mut seen = Vec::new();
        loop {
            let (_, m) = raw.recv_method().await.expect("a reply");
            let done = matches!(m, AMQPClass::Basic(basic::AMQPMethod::QosOk(_)));
            seen.push(m);
            if done {
                return seen;
            }
        }
    }

    #[tokio::test]
    async fn same_as_rabbitmq_deleting_a_queue_sends_basic_cancel_after_delete_ok() {
        let caps = table(&[(
            "capabilities",
            AMQPValue::FieldTable(table(&[(
                "consumer_cancel_notify",
                AMQPValue::Boolean(true),
            )])),
        )]);
        let seen = consume_then_delete(caps).await;
        assert!(
            matches!(seen[0], AMQPClass::Queue(queue::AMQPMethod::DeleteOk(_))),
            "{seen:?}"
        );
        assert_eq!(
            seen[1],
            AMQPClass::Basic(basic::AMQPMethod::Cancel(basic::Cancel {
                consumer_tag: "w".into(),
                nowait: true
            }))
        );
    }

    #[tokio::test]
    async fn same_as_rabbitmq_no_basic_cancel_for_clients_without_the_capability() {
        let seen = consume_then_delete(FieldTable::default()).await;
        assert_eq!(seen.len(), 2, "only delete-ok and qos-ok: {seen:?}");
    }
}
