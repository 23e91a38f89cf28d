//! Limits on what clients create: queues and connections per vhost (RabbitMQ's `max-queues`
//! and `max-connections`), queues in the broker, exchanges, bindings, consumers, uncommitted
//! transactions and unconfirmed publishes. Each refusal carries RabbitMQ's code and text (or
//! 406 with a text naming the limit), and nothing else is disturbed.

mod common;

use amq_protocol::protocol::{AMQPClass, basic};
use amq_protocol::types::{AMQPValue, FieldTable};
use common::*;
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::{BasicProperties, ExchangeKind};
use lepus::store::definitions::VhostLimits;

fn limits(max_queues: Option<i64>, max_connections: Option<i64>) -> VhostLimits {
    VhostLimits {
        max_queues,
        max_connections,
    }
}

async fn declare(ch: &lapin::Channel, name: &str) -> lapin::Result<lapin::Queue> {
    within(ch.queue_declare(name.into(), Default::default(), FieldTable::default())).await
}

/// A channel that must still work after a neighbour was refused.
async fn assert_healthy(ch: &lapin::Channel) {
    within(ch.queue_declare(
        "".into(),
        QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        },
        FieldTable::default(),
    ))
    .await
    .expect("the witness channel still works");
}

#[tokio::test]
async fn same_as_rabbitmq_max_connections_refuses_the_open_and_frees_on_close() {
    let broker = Broker::start().await;
    let server = broker.server.as_ref().unwrap().broker().clone();
    server
        .set_vhost_limits("/", limits(None, Some(2)))
        .expect("vhost exists");
    let first = broker.connect().await;
    let second = broker.connect().await;
    let refused = lapin::Connection::connect(&broker.uri(), Default::default()).await;
    assert_amqp_error(
        refused,
        530,
        "NOT_ALLOWED - access to vhost '/' refused for user 'guest': connection limit (2) is reached",
    );
    // The refused connection did not take a slot; closing one frees one.
    within(first.close(200, "bye".into())).await.unwrap();
    let third = broker.connect().await;
    let ch = within(third.create_channel()).await.unwrap();
    assert_healthy(&ch).await;
    let ch2 = within(second.create_channel()).await.unwrap();
    assert_healthy(&ch2).await;
    // Clearing the limit lets more in.
    server
        .set_vhost_limits("/", VhostLimits::default())
        .unwrap();
    let _more = broker.connect().await;
}

#[tokio::test]
async fn same_as_rabbitmq_max_queues_refuses_a_new_queue_with_precondition_failed() {
    let broker = Broker::start().await;
    let server = broker.server.as_ref().unwrap().broker().clone();
    server.set_vhost_limits("/", limits(Some(2), None)).unwrap();
    let (_c, ch) = broker.channel().await;
    declare(&ch, "a").await.unwrap();
    declare(&ch, "b").await.unwrap();
    // Declaring an existing queue again is not a new queue.
    declare(&ch, "a").await.expect("redeclare is fine");
    assert_amqp_error(
        declare(&ch, "c").await,
        406,
        "PRECONDITION_FAILED - cannot declare queue 'c': queue limit in vhost '/' (2) is reached",
    );
    let (_w, witness) = broker.channel().await;
    within(witness.queue_delete("a".into(), Default::default()))
        .await
        .unwrap();
    declare(&witness, "c").await.expect("a slot was freed");
}

#[tokio::test]
async fn vhost_limits_survive_a_restart() {
    let config = Config::for_tests();
    let mut broker = Broker::start_with(config.clone()).await;
    let server = broker.server.as_ref().unwrap().broker().clone();
    server.set_vhost_limits("/", limits(Some(1), None)).unwrap();
    drop(server);
    broker.stop().await;
    let broker = Broker::start_with(config).await;
    let (_c, ch) = broker.channel().await;
    declare(&ch, "one").await.unwrap();
    assert_amqp_error(
        declare(&ch, "two").await,
        406,
        "PRECONDITION_FAILED - cannot declare queue 'two': queue limit in vhost '/' (1) is reached",
    );
}

#[tokio::test]
async fn the_broker_wide_queue_limit_is_refused_as_rabbitmq_words_it_and_deleting_frees_a_slot() {
    let mut config = Config::for_tests();
    config.limits.max_queues = 3;
    let broker = Broker::start_with(config).await;
    let (_c, ch) = broker.channel().await;
    for name in ["q1", "q2", "q3"] {
        declare(&ch, name).await.unwrap();
    }
    assert_amqp_error(
        declare(&ch, "q4").await,
        406,
        "PRECONDITION_FAILED - cannot declare queue 'q4': queue limit in cluster (3) is reached",
    );
    let (_w, witness) = broker.channel().await;
    within(witness.queue_delete("q1".into(), Default::default()))
        .await
        .unwrap();
    declare(&witness, "q4")
        .await
        .expect("deleting freed a slot");
}

#[tokio::test]
async fn exchanges_per_vhost_are_limited() {
    let mut config = Config::for_tests();
    // The seven exchanges every vhost starts with count too.
    config.limits.max_exchanges_per_vhost = 8;
    let broker = Broker::start_with(config).await;
    let (_c, ch) = broker.channel().await;
    let declare_x = |name: &'static str| {
        ch.exchange_declare(
            name.into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
    };
    within(declare_x("x1")).await.unwrap();
    within(declare_x("x1")).await.expect("redeclare is fine");
    assert_amqp_error(
        within(declare_x("x2")).await,
        406,
        "PRECONDITION_FAILED - cannot declare exchange 'x2': exchange limit in vhost '/' (8) is reached",
    );
    let (_w, witness) = broker.channel().await;
    assert_healthy(&witness).await;
}

#[tokio::test]
async fn bindings_per_exchange_are_limited_and_rebinding_is_not_a_new_binding() {
    let mut config = Config::for_tests();
    config.limits.max_bindings_per_exchange = 2;
    let broker = Broker::start_with(config).await;
    let (_c, ch) = broker.channel().await;
    declare(&ch, "q").await.unwrap();
    let bind = |key: &'static str| {
        ch.queue_bind(
            "q".into(),
            "amq.direct".into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
    };
    within(bind("a")).await.unwrap();
    within(bind("b")).await.unwrap();
    within(bind("a")).await.expect("the same binding again");
    assert_amqp_error(
        within(bind("c")).await,
        406,
        "PRECONDITION_FAILED - cannot bind to exchange 'amq.direct' in vhost '/': binding limit (2) is reached",
    );
    let (_w, witness) = broker.channel().await;
    within(witness.queue_unbind(
        "q".into(),
        "amq.direct".into(),
        "a".into(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    within(witness.queue_bind(
        "q".into(),
        "amq.direct".into(),
        "c".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    ))
    .await
    .expect("unbinding freed a slot");
}

#[tokio::test]
async fn same_as_rabbitmq_consumers_per_channel_are_limited_with_a_connection_error() {
    let mut config = Config::for_tests();
    config.limits.max_consumers_per_channel = 2;
    let broker = Broker::start_with(config).await;
    let (_w, witness) = broker.channel().await;
    declare(&witness, "q").await.unwrap();
    let mut raw = broker.raw().await;
    raw.handshake().await;
    raw.open_channel(1).await;
    for tag in ["c1", "c2", "c3"] {
        raw.send_method(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
                queue: "q".into(),
                consumer_tag: tag.into(),
                no_local: false,
                no_ack: false,
                exclusive: false,
                nowait: true,
                arguments: FieldTable::default(),
            })),
        )
        .await;
    }
    let (code, text, class, method) = raw.expect_connection_close().await;
    assert_eq!(
        (code, text.as_str(), class, method),
        (
            530,
            "NOT_ALLOWED - reached maximum (2) of consumers per channel",
            60,
            20
        )
    );
    assert_healthy(&witness).await;
}

#[tokio::test]
async fn what_a_connections_consumers_hold_is_limited_and_freed_when_they_go() {
    // A consumer's arguments may be as large as a frame: without a budget, 65,536 consumers
    // per channel could hold gigabytes for one connection.
    let mut config = Config::for_tests();
    config.limits.connection_consumer_bytes = 100 * 1024;
    let broker = Broker::start_with(config).await;
    let (_w, witness) = broker.channel().await;
    declare(&witness, "q").await.unwrap();
    let conn = broker.connect().await;
    let padded = table(&[("x-padding", long_str(&"x".repeat(30 * 1024)))]);
    let consume = |ch: lapin::Channel, tag: &'static str| {
        let padded = padded.clone();
        async move { within(ch.basic_consume("q".into(), tag.into(), Default::default(), padded)).await }
    };
    // lapin cancels a consumer it drops: they are kept until the end.
    let mut kept = Vec::new();
    let first = within(conn.create_channel()).await.unwrap();
    for tag in ["a", "b", "c"] {
        kept.push(consume(first.clone(), tag).await.expect("under the budget"));
    }
    // A cancel gives back what its consumer held, and so does closing a channel.
    within(first.basic_cancel("a".into(), Default::default()))
        .await
        .unwrap();
    kept.push(
        consume(first.clone(), "d")
            .await
            .expect("the cancel freed its share"),
    );
    within(first.close(200, "bye".into())).await.unwrap();
    let second = within(conn.create_channel()).await.unwrap();
    for tag in ["e", "f", "g"] {
        let consumer = consume(second.clone(), tag).await;
        kept.push(consumer.expect("closing the channel freed its consumers' shares"));
    }
    assert_amqp_error(
        consume(second.clone(), "h").await,
        530,
        "NOT_ALLOWED - consumers of this connection would hold more than 102400 bytes (connection_consumer_bytes)",
    );
    assert_healthy(&witness).await;
}

#[tokio::test]
async fn what_all_connections_consumers_hold_is_limited_and_charged_to_the_memory_gauge() {
    // A budget per connection alone let a client with many connections hold that many
    // times as much: the broker's budget counts them all, and the memory gauge sees them.
    let mut config = Config::for_tests();
    config.limits.broker_consumer_bytes = 100 * 1024;
    let broker = Broker::start_with(config).await;
    let memory = broker.server.as_ref().unwrap().broker().memory;
    let (_w, witness) = broker.channel().await;
    declare(&witness, "q").await.unwrap();
    let padded = table(&[("x-padding", long_str(&"x".repeat(30 * 1024)))]);
    let before = memory.used();
    let mut kept = Vec::new();
    let mut connections = Vec::new();
    for tag in ["a", "b", "c"] {
        let conn = broker.connect().await;
        let ch = within(conn.create_channel()).await.unwrap();
        let consumer =
            within(ch.basic_consume("q".into(), tag.into(), Default::default(), padded.clone()))
                .await
                .expect("under the broker's budget");
        kept.push(consumer);
        connections.push(conn);
    }
    assert!(
        memory.used() >= before + 3 * 30 * 1024,
        "three consumers of 30 KiB charged: {before} -> {}",
        memory.used()
    );
    let fourth = broker.connect().await;
    let ch = within(fourth.create_channel()).await.unwrap();
    assert_amqp_error(
        within(ch.basic_consume("q".into(), "d".into(), Default::default(), padded.clone())).await,
        530,
        "NOT_ALLOWED - consumers of this broker would hold more than 102400 bytes (broker_consumer_bytes)",
    );
    // A connection that goes gives its consumers' shares back to the broker.
    let consumers = broker.server.as_ref().unwrap().broker().consumers.clone();
    let held = consumers.held_bytes();
    within(connections.remove(0).close(200, "bye".into()))
        .await
        .unwrap();
    within(async {
        while consumers.held_bytes() >= held {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await;
    let fifth = broker.connect().await;
    let ch = within(fifth.create_channel()).await.unwrap();
    within(ch.basic_consume("q".into(), "e".into(), Default::default(), padded.clone()))
        .await
        .expect("the closed connection's consumer gave its share back");
    assert_healthy(&witness).await;
}

#[tokio::test]
async fn what_queues_exchanges_and_bindings_hold_is_limited_counted_the_same_after_a_restart_and_given_back()
 {
    // The limits on their numbers multiply to a hundred billion bindings: the broker's
    // topology budget bounds what they all hold.
    let dir = temp_dir("topology-budget");
    let _ = std::fs::remove_dir_all(&dir);
    let config = |budget_bytes| {
        let mut config = Config::for_tests();
        config.data_dir = dir.clone();
        config.limits.broker_topology_bytes = budget_bytes;
        config
    };
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    // Each binding keeps some 4.6 KiB: 577 bytes and its 2 KiB of arguments twice, and as
    // much again in the definitions.
    let padded = table(&[("x-padding", long_str(&"x".repeat(2000)))]);
    let bind = |ch: lapin::Channel, queue: &'static str, key: &'static str| {
        let padded = padded.clone();
        async move {
            within(ch.queue_bind(
                queue.into(),
                "amq.direct".into(),
                key.into(),
                QueueBindOptions::default(),
                padded,
            ))
            .await
        }
    };
    let mut broker = Broker::start_with(config(usize::MAX)).await;
    let held = |broker: &Broker| broker.topology().held_bytes();
    let (_w, witness) = broker.channel().await;
    let before = held(&broker);
    for q in ["q", "r"] {
        within(witness.queue_declare(q.into(), durable, FieldTable::default()))
            .await
            .unwrap();
    }
    bind(witness.clone(), "q", "a").await.unwrap();
    bind(witness.clone(), "q", "b").await.unwrap();
    bind(witness.clone(), "r", "c").await.unwrap();
    let declared = held(&broker);
    assert!(
        declared >= before + 3 * 8000,
        "three bindings of 8 KiB charged: {before} -> {declared}"
    );
    drop(witness);
    drop(_w);
    broker.stop().await;

    // Same as RabbitMQ: every durable queue and binding comes back, even past a smaller
    // budget, counted as when they were declared: a new one is refused until one goes.
    let budget = declared - 1;
    let broker = Broker::start_with(config(budget)).await;
    assert_eq!(held(&broker), declared, "counted as when declared");
    let full = format!(
        "queues, exchanges and bindings of this broker would hold more than {budget} bytes (broker_topology_bytes)"
    );
    let (_w, witness) = broker.channel().await;
    let (_c, ch) = broker.channel().await;
    assert_amqp_error(
        bind(ch, "q", "d").await,
        406,
        &format!("PRECONDITION_FAILED - cannot bind to exchange 'amq.direct' in vhost '/': {full}"),
    );
    let (_c, ch) = broker.channel().await;
    assert_amqp_error(
        declare(&ch, "s").await,
        406,
        &format!("PRECONDITION_FAILED - cannot declare queue 's': {full}"),
    );
    let (_c, ch) = broker.channel().await;
    assert_amqp_error(
        within(ch.exchange_declare(
            "x".into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        ))
        .await,
        406,
        &format!("PRECONDITION_FAILED - cannot declare exchange 'x': {full}"),
    );
    // A queue that goes gives its share and its bindings' back.
    within(witness.queue_delete("q".into(), Default::default()))
        .await
        .unwrap();
    assert!(
        held(&broker) < declared - 2 * 8000,
        "after the deletion: {}",
        held(&broker)
    );
    bind(witness.clone(), "r", "d")
        .await
        .expect("the deleted queue and its bindings gave their shares back");
    declare(&witness, "s").await.expect("room for a queue");
    assert_healthy(&witness).await;
}

#[tokio::test]
async fn a_queues_arguments_are_charged_as_kept_decoded() {
    // 4,000 values of arguments are some 28 KB on the wire and half a megabyte kept: a
    // client declaring such queues by the thousand is refused at the budget.
    let mut config = Config::for_tests();
    config.limits.broker_topology_bytes = 256 * 1024;
    let broker = Broker::start_with(config).await;
    let memory = broker.server.as_ref().unwrap().broker().memory;
    let values = |n: usize| {
        let mut args = FieldTable::default();
        for i in 0..n {
            args.insert(format!("k{i}").into(), AMQPValue::Boolean(true));
        }
        args
    };
    let topology = broker.topology();
    let (_w, witness) = broker.channel().await;
    let before = (topology.held_bytes(), memory.used());
    within(witness.queue_declare("small".into(), Default::default(), values(1000)))
        .await
        .expect("within the budget");
    assert!(
        topology.held_bytes() >= before.0 + 1000 * 128,
        "1,000 values charged: {before:?} -> {}",
        topology.held_bytes()
    );
    // Not to the memory gauge, by which queues page their backlogs out: that gives none of
    // it back, and charged, some 20,000 durable queues put every backlog on disk.
    assert!(
        memory.used() < before.1 + 64 * 1024,
        "the gauge: {before:?} -> {}",
        memory.used()
    );
    let (_c, ch) = broker.channel().await;
    assert_amqp_error(
        within(ch.queue_declare("large".into(), Default::default(), values(4000))).await,
        406,
        "PRECONDITION_FAILED - cannot declare queue 'large': queues, exchanges and bindings of this broker would hold more than 262144 bytes (broker_topology_bytes)",
    );
    assert_healthy(&witness).await;
}

#[tokio::test]
async fn a_deleted_vhost_gives_back_what_its_exchanges_held_even_bound_in_a_cycle() {
    // Exchanges bound to each other (or to themselves) hold each other in their bindings:
    // a vhost's deletion takes their bindings, so that they go, and their shares with them.
    let broker = Broker::start().await;
    let server = broker.server.as_ref().unwrap().broker();
    let held = || broker.topology().held_bytes();
    let before = held();
    let def = lepus::store::definitions::VhostDef::named("v");
    server.add_vhost(&def).unwrap();
    server
        .set_permissions("guest", "v", ".*", ".*", ".*")
        .unwrap();
    let uri = format!("amqp://guest:guest@{}/v", broker.addr);
    let conn = within(lapin::Connection::connect(&uri, Default::default()))
        .await
        .unwrap();
    let ch = within(conn.create_channel()).await.unwrap();
    for x in ["a", "b"] {
        within(ch.exchange_declare(
            x.into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        ))
        .await
        .unwrap();
    }
    for (destination, source) in [("b", "a"), ("a", "b"), ("a", "a")] {
        within(ch.exchange_bind(
            destination.into(),
            source.into(),
            "".into(),
            Default::default(),
            FieldTable::default(),
        ))
        .await
        .unwrap();
    }
    assert!(held() > before, "{before} -> {}", held());
    within(conn.close(200, "bye".into())).await.unwrap();
    let v = server.vhost("v").unwrap();
    server.delete_vhost("v").unwrap();
    // Whoever still holds the deleted vhost (a channel whose close is on its way, an API
    // request) adds nothing to it: that would outlive the deletion, its share held.
    let refused = v
        .bind_exchange("a", "a", "again", &FieldTable::default())
        .expect_err("refused");
    assert_eq!(
        (refused.code as u16, refused.text.as_str()),
        (320, "CONNECTION_FORCED - vhost 'v' is deleted")
    );
    drop(v);
    within(async {
        while held() != before {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn a_transaction_past_max_uncommitted_is_refused_and_rolled_back() {
    // A raw client: the refusal closes the channel at the fourth publish, before any commit,
    // and lapin would report it as a close or as a closing channel depending on timing.
    use amq_protocol::frame::AMQPFrame;
    let mut config = Config::for_tests();
    config.limits.max_uncommitted_per_channel = 3;
    let broker = Broker::start_with(config).await;
    let (_c, setup) = broker.channel().await;
    declare(&setup, "q").await.unwrap();
    let mut raw = broker.raw().await;
    raw.handshake().await;
    raw.open_channel(1).await;
    raw.tx_select(1).await;
    for _ in 0..4 {
        raw.start_publish(1, "q", 1).await;
        raw.send_frame(AMQPFrame::Body(1, b"m".to_vec())).await;
    }
    let (code, text, _, _) = raw.expect_channel_close(1).await;
    assert_eq!(
        (code, text.as_str()),
        (
            406,
            "PRECONDITION_FAILED - transaction exceeds max_uncommitted_per_channel (3 messages)"
        )
    );
    assert_eq!(
        message_count(&setup, "q").await,
        0,
        "nothing of the refused transaction was routed"
    );
}

#[tokio::test]
async fn publishes_past_max_unconfirmed_wait_for_the_disk_and_are_all_confirmed() {
    // With a limit of one, the broker stops reading the publisher until each persistent
    // message is on disk: every publish is still confirmed, in order, and none is lost.
    let mut config = Config::for_tests();
    config.limits.max_unconfirmed_per_channel = 1;
    let broker = Broker::start_with(config).await;
    let (_c, ch) = broker.channel().await;
    within(ch.queue_declare(
        "durable".into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    ))
    .await
    .unwrap();
    within(ch.confirm_select(ConfirmSelectOptions::default()))
        .await
        .unwrap();
    let mut confirms = Vec::new();
    for i in 0..500u32 {
        let confirm = within(ch.basic_publish(
            "".into(),
            "durable".into(),
            BasicPublishOptions::default(),
            &i.to_be_bytes(),
            BasicProperties::default().with_delivery_mode(2),
        ))
        .await
        .unwrap();
        confirms.push(confirm);
    }
    for confirm in confirms {
        assert!(within(confirm).await.unwrap().is_ack());
    }
    let q_count = message_count(&ch, "durable").await;
    assert_eq!(q_count, 500);
}

/// Arguments are kept decoded, where a one-byte value takes 32 bytes or more: a queue, an
/// exchange or a binding keeps at most 4,096 argument values, nested ones included
/// (RabbitMQ has no such limit, and no client we know of sends more than a few dozen).
#[tokio::test]
async fn arguments_past_4096_values_are_refused() {
    let broker = Broker::start().await;
    let args = |values: usize| {
        let mut t = FieldTable::default();
        let voids = vec![amq_protocol::types::AMQPValue::Void; values - 1];
        t.insert(
            "x-many".into(),
            amq_protocol::types::AMQPValue::FieldArray(voids.into()),
        );
        t
    };
    let (_c, ch) = broker.channel().await;
    within(ch.queue_declare("most".into(), Default::default(), args(4096)))
        .await
        .expect("4,096 values are kept");
    assert_amqp_error(
        within(ch.queue_declare("more".into(), Default::default(), args(4097))).await,
        406,
        "PRECONDITION_FAILED - arguments of queue 'more' in vhost '/' hold more than 4096 values",
    );
    let (_c, ch) = broker.channel().await;
    assert_amqp_error(
        within(ch.exchange_declare(
            "more".into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions::default(),
            args(4097),
        ))
        .await,
        406,
        "PRECONDITION_FAILED - arguments of exchange 'more' in vhost '/' hold more than 4096 values",
    );
    let (_c, ch) = broker.channel().await;
    within(ch.queue_bind(
        "most".into(),
        "amq.fanout".into(),
        "".into(),
        QueueBindOptions::default(),
        args(4096),
    ))
    .await
    .expect("4,096 values are kept");
    assert_amqp_error(
        within(ch.queue_bind(
            "most".into(),
            "amq.fanout".into(),
            "".into(),
            QueueBindOptions::default(),
            args(4097),
        ))
        .await,
        406,
        "PRECONDITION_FAILED - arguments of a binding from exchange 'amq.fanout' in vhost '/' hold more than 4096 values",
    );
    let (_w, witness) = broker.channel().await;
    assert_healthy(&witness).await;
}

/// The safety net on unacknowledged deliveries per channel (`max_unacked_per_channel`, where
/// consumers' credit stops) holds for `basic.get` too: gets never acknowledged pulled a whole
/// backlog into memory. Past it the channel is closed with 406 naming the limit, and what
/// the channel held goes back to the queue.
#[tokio::test]
async fn gets_past_max_unacked_are_refused_and_what_was_got_goes_back() {
    use lapin::options::BasicGetOptions;
    let mut config = Config::for_tests();
    config.limits.max_unacked_per_channel = 3;
    let broker = Broker::start_with(config).await;
    let (_c, setup) = broker.channel().await;
    declare(&setup, "q").await.unwrap();
    for _ in 0..5 {
        within(setup.basic_publish(
            "".into(),
            "q".into(),
            BasicPublishOptions::default(),
            b"m",
            BasicProperties::default(),
        ))
        .await
        .unwrap();
    }
    assert_eq!(message_count(&setup, "q").await, 5);
    let (_g, getter) = broker.channel().await;
    for _ in 0..3 {
        let got = within(getter.basic_get("q".into(), BasicGetOptions::default())).await;
        assert!(got.unwrap().is_some());
    }
    let refused = within(getter.basic_get("q".into(), BasicGetOptions::default())).await;
    assert_amqp_error(
        refused,
        406,
        "PRECONDITION_FAILED - channel 1 holds 3 unacknowledged deliveries, the most one channel may (max_unacked_per_channel)",
    );
    assert_eq!(message_count(&setup, "q").await, 5);
    assert_healthy(&setup).await;
}
