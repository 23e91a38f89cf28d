//! Exchanges: declaring, deleting, binding, and routing through all four types.

mod common;

use amq_protocol::types::AMQPValue;
use common::*;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, ExchangeKind};

async fn declare(ch: &Channel, name: &str, kind: ExchangeKind) {
    within(ch.exchange_declare(name.into(), kind, Default::default(), FieldTable::default()))
        .await
        .expect("exchange declared");
}

async fn queue_bound(ch: &Channel, queue: &str, exchange: &str, key: &str, args: FieldTable) {
    within(ch.queue_declare(
        queue.into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    ))
    .await
    .expect("queue declared");
    within(ch.queue_bind(
        queue.into(),
        exchange.into(),
        key.into(),
        Default::default(),
        args,
    ))
    .await
    .expect("queue bound");
}

/// Publishes with confirms so that routing is done before we look.
async fn publish_confirmed(
    ch: &Channel,
    exchange: &str,
    key: &str,
    body: &[u8],
    props: BasicProperties,
) {
    within(async {
        ch.basic_publish(exchange.into(), key.into(), Default::default(), body, props)
            .await
            .expect("published")
            .await
            .expect("confirmed")
    })
    .await;
}

async fn count(ch: &Channel, queue: &str) -> u32 {
    within(ch.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    ))
    .await
    .expect("queue exists")
    .message_count()
}

async fn confirming(broker: &Broker) -> (lapin::Connection, Channel) {
    let (conn, ch) = broker.channel().await;
    within(ch.confirm_select(Default::default())).await.unwrap();
    (conn, ch)
}

#[tokio::test]
async fn same_as_rabbitmq_every_amq_exchange_is_predeclared() {
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    for (name, kind) in [
        ("amq.direct", ExchangeKind::Direct),
        ("amq.fanout", ExchangeKind::Fanout),
        ("amq.topic", ExchangeKind::Topic),
        ("amq.headers", ExchangeKind::Headers),
        ("amq.match", ExchangeKind::Headers),
    ] {
        // Redeclaring a predeclared exchange with its own properties is fine.
        within(ch.exchange_declare(
            name.into(),
            kind,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        ))
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

#[tokio::test]
async fn same_as_rabbitmq_exchange_names_starting_with_amq_are_reserved() {
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    assert_amqp_error(
        within(ch.exchange_declare(
            "amq.mine".into(),
            ExchangeKind::Direct,
            Default::default(),
            FieldTable::default(),
        ))
        .await,
        403,
        "ACCESS_REFUSED - exchange name 'amq.mine' contains reserved prefix 'amq.*'",
    );
    let (_c, ch) = broker.channel().await;
    assert_amqp_error(
        within(ch.exchange_delete("amq.direct".into(), Default::default())).await,
        403,
        "ACCESS_REFUSED - deletion of system exchange 'amq.direct' in vhost '/' not allowed",
    );
}

#[tokio::test]
async fn same_as_rabbitmq_the_default_exchange_cannot_be_touched() {
    let broker = Broker::start().await;
    let text = "ACCESS_REFUSED - operation not permitted on the default exchange";
    let (_c, ch) = broker.channel().await;
    assert_amqp_error(
        within(ch.exchange_declare(
            "".into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ))
        .await,
        403,
        text,
    );
    let (_c, ch) = broker.channel().await;
    within(ch.queue_declare("q".into(), Default::default(), FieldTable::default()))
        .await
        .unwrap();
    assert_amqp_error(
        within(ch.queue_bind(
            "q".into(),
            "".into(),
            "q".into(),
            Default::default(),
            FieldTable::default(),
        ))
        .await,
        403,
        text,
    );
    let (_c, ch) = broker.channel().await;
    assert_amqp_error(
        within(ch.exchange_delete("".into(), Default::default())).await,
        403,
        text,
    );
}

/// RabbitMQ 3.10 closed the whole connection (503 COMMAND_INVALID) for an unknown exchange
/// type; 3.12 and 3.13 made it a channel error (406), and current client suites expect that.
#[tokio::test]
async fn same_as_rabbitmq_3_12_an_unknown_exchange_type_closes_only_the_channel() {
    let broker = Broker::start().await;
    let (conn, ch) = broker.channel().await;
    assert_amqp_error(
        within(ch.exchange_declare(
            "x".into(),
            ExchangeKind::Custom("ZZwwInvalid".into()),
            Default::default(),
            FieldTable::default(),
        ))
        .await,
        406,
        "PRECONDITION_FAILED - unknown exchange type 'ZZwwInvalid'",
    );
    assert!(conn.status().connected(), "the connection stays up");
    let other = within(conn.create_channel())
        .await
        .expect("a new channel opens");
    within(other.exchange_declare(
        "x".into(),
        ExchangeKind::Direct,
        Default::default(),
        FieldTable::default(),
    ))
    .await
    .expect("and works");
}

#[tokio::test]
async fn same_as_rabbitmq_passive_declare_of_a_missing_exchange_is_404() {
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    assert_amqp_error(
        within(ch.exchange_declare(
            "nope".into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ))
        .await,
        404,
        "NOT_FOUND - no exchange 'nope' in vhost '/'",
    );
}

#[tokio::test]
async fn same_as_rabbitmq_redeclare_with_other_properties_is_406() {
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    declare(&ch, "x", ExchangeKind::Direct).await;
    assert_amqp_error(
        within(ch.exchange_declare(
            "x".into(),
            ExchangeKind::Fanout,
            Default::default(),
            FieldTable::default(),
        ))
        .await,
        406,
        "PRECONDITION_FAILED - inequivalent arg 'type' for exchange 'x' in vhost '/': received 'fanout' but current is 'direct'",
    );
    let (_c, ch) = broker.channel().await;
    assert_amqp_error(
        within(ch.exchange_declare(
            "x".into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        ))
        .await,
        406,
        "PRECONDITION_FAILED - inequivalent arg 'durable' for exchange 'x' in vhost '/': received 'true' but current is 'false'",
    );
    let (_c, ch) = broker.channel().await;
    assert_amqp_error(
        within(ch.exchange_declare(
            "x".into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        ))
        .await,
        406,
        "PRECONDITION_FAILED - inequivalent arg 'auto_delete' for exchange 'x' in vhost '/': received 'true' but current is 'false'",
    );
    let (_c, ch) = broker.channel().await;
    assert_amqp_error(
        within(ch.exchange_declare(
            "x".into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                internal: true,
                ..Default::default()
            },
            FieldTable::default(),
        ))
        .await,
        406,
        "PRECONDITION_FAILED - inequivalent arg 'internal' for exchange 'x' in vhost '/': received 'true' but current is 'false'",
    );
    // Unknown arguments are not compared.
    let (_c, ch) = broker.channel().await;
    within(ch.exchange_declare(
        "x".into(),
        ExchangeKind::Direct,
        Default::default(),
        table(&[("x-whatever", long_str("1"))]),
    ))
    .await
    .expect("unknown arguments are ignored on redeclare");
}

#[tokio::test]
async fn same_as_rabbitmq_delete_if_unused_refuses_an_exchange_with_bindings() {
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    declare(&ch, "busy", ExchangeKind::Fanout).await;
    queue_bound(&ch, "q", "busy", "", FieldTable::default()).await;
    assert_amqp_error(
        within(ch.exchange_delete(
            "busy".into(),
            ExchangeDeleteOptions {
                if_unused: true,
                ..Default::default()
            },
        ))
        .await,
        406,
        "PRECONDITION_FAILED - exchange 'busy' in vhost '/' in use",
    );
    let (_c, ch) = broker.channel().await;
    within(ch.exchange_delete("busy".into(), Default::default()))
        .await
        .unwrap();
    // Deleting a missing exchange succeeds, as in RabbitMQ.
    within(ch.exchange_delete("busy".into(), Default::default()))
        .await
        .unwrap();
    assert_amqp_error(
        within(ch.exchange_declare(
            "busy".into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ))
        .await,
        404,
        "NOT_FOUND - no exchange 'busy' in vhost '/'",
    );
}

#[tokio::test]
async fn same_as_rabbitmq_publishing_to_a_missing_exchange_closes_the_channel() {
    let broker = Broker::start().await;
    let (_c, ch) = confirming(&broker).await;
    assert_publish_refused(
        &ch,
        "no-such-ex",
        "k",
        b"x",
        Default::default(),
        404,
        "NOT_FOUND - no exchange 'no-such-ex' in vhost '/'",
    )
    .await;
}

#[tokio::test]
async fn same_as_rabbitmq_publishing_to_an_internal_exchange_is_refused() {
    let broker = Broker::start().await;
    let (_c, ch) = confirming(&broker).await;
    within(ch.exchange_declare(
        "inside".into(),
        ExchangeKind::Fanout,
        ExchangeDeclareOptions {
            internal: true,
            ..Default::default()
        },
        FieldTable::default(),
    ))
    .await
    .unwrap();
    assert_publish_refused(
        &ch,
        "inside",
        "k",
        b"x",
        Default::default(),
        403,
        "ACCESS_REFUSED - cannot publish to internal exchange 'inside' in vhost '/'",
    )
    .await;
}

#[tokio::test]
async fn direct_routes_by_exact_key() {
    let broker = Broker::start().await;
    let (_c, ch) = confirming(&broker).await;
    declare(&ch, "d", ExchangeKind::Direct).await;
    queue_bound(&ch, "qa", "d", "a", FieldTable::default()).await;
    queue_bound(&ch, "qb", "d", "b", FieldTable::default()).await;
    queue_bound(&ch, "qb", "d", "a", FieldTable::default()).await;
    publish_confirmed(&ch, "d", "a", b"1", Default::default()).await;
    publish_confirmed(&ch, "d", "b", b"2", Default::default()).await;
    publish_confirmed(&ch, "d", "A", b"3", Default::default()).await;
    assert_eq!(count(&ch, "qa").await, 1);
    assert_eq!(count(&ch, "qb").await, 2);
}

#[tokio::test]
async fn fanout_routes_to_every_bound_queue_once() {
    let broker = Broker::start().await;
    let (_c, ch) = confirming(&broker).await;
    declare(&ch, "f", ExchangeKind::Fanout).await;
    for q in ["f1", "f2", "f3"] {
        queue_bound(&ch, q, "f", "ignored", FieldTable::default()).await;
    }
    queue_bound(&ch, "f1", "f", "another-key", FieldTable::default()).await;
    publish_confirmed(&ch, "f", "anything", b"x", Default::default()).await;
    for q in ["f1", "f2", "f3"] {
        assert_eq!(count(&ch, q).await, 1, "{q}");
    }
}

#[tokio::test]
async fn same_as_rabbitmq_topic_wildcards_match_whole_words() {
    let broker = Broker::start().await;
    let (_c, ch) = confirming(&broker).await;
    // (binding key, routing keys published, how many match): observed on RabbitMQ 3.10.8.
    let cases: &[(&str, &[&str], u32)] = &[
        ("a.*.c", &["a.b.c", "a..c", "a.b.b.c", "a.c"], 2),
        ("a.#", &["a", "a.b", "a.b.c", "b.a"], 3),
        ("#.x.#", &["x", "a.x", "x.b", "a.b", "ax"], 3),
        ("", &["", "a"], 1),
        ("*", &["", "a", "a.b", "."], 1),
        ("#", &["", ".", "a.b"], 3),
    ];
    for (i, (key, keys, expected)) in cases.iter().enumerate() {
        let exchange = format!("topic{i}");
        let queue = format!("topicq{i}");
        declare(&ch, &exchange, ExchangeKind::Topic).await;
        queue_bound(&ch, &queue, &exchange, key, FieldTable::default()).await;
        for k in *keys {
            publish_confirmed(&ch, &exchange, k, b"m", Default::default()).await;
        }
        assert_eq!(count(&ch, &queue).await, *expected, "binding {key:?}");
    }
}

#[tokio::test]
async fn topic_counts_exactly_per_binding() {
    let broker = Broker::start().await;
    let (_c, ch) = confirming(&broker).await;
    declare(&ch, "tt", ExchangeKind::Topic).await;
    queue_bound(&ch, "exact", "tt", "stock.*.nyse", FieldTable::default()).await;
    queue_bound(&ch, "any_stock", "tt", "stock.#", FieldTable::default()).await;
    for key in [
        "stock.ibm.nyse",
        "stock.msft.nasdaq",
        "stock",
        "stocks.ibm.nyse",
        "stock.ibm.nyse.extra",
    ] {
        publish_confirmed(&ch, "tt", key, b"m", Default::default()).await;
    }
    assert_eq!(count(&ch, "exact").await, 1);
    assert_eq!(count(&ch, "any_stock").await, 4);
}

#[tokio::test]
async fn headers_matches_all_and_any() {
    let broker = Broker::start().await;
    let (_c, ch) = confirming(&broker).await;
    declare(&ch, "h", ExchangeKind::Headers).await;
    queue_bound(
        &ch,
        "h_all",
        "h",
        "",
        table(&[
            ("x-match", long_str("all")),
            ("a", long_str("1")),
            ("b", AMQPValue::LongInt(2)),
        ]),
    )
    .await;
    queue_bound(
        &ch,
        "h_any",
        "h",
        "",
        table(&[
            ("x-match", long_str("any")),
            ("a", long_str("1")),
            ("b", AMQPValue::LongInt(2)),
        ]),
    )
    .await;
    let with = |t: FieldTable| BasicProperties::default().with_headers(t);
    publish_confirmed(
        &ch,
        "h",
        "",
        b"both",
        with(table(&[
            ("a", long_str("1")),
            ("b", AMQPValue::LongLongInt(2)),
        ])),
    )
    .await;
    publish_confirmed(&ch, "h", "", b"one", with(table(&[("a", long_str("1"))]))).await;
    publish_confirmed(&ch, "h", "", b"none", with(table(&[("c", long_str("1"))]))).await;
    publish_confirmed(&ch, "h", "", b"no headers", Default::default()).await;
    assert_eq!(count(&ch, "h_all").await, 1);
    assert_eq!(count(&ch, "h_any").await, 2);
}

#[tokio::test]
async fn same_as_rabbitmq_a_bad_x_match_is_refused_at_bind() {
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    declare(&ch, "hx", ExchangeKind::Headers).await;
    within(ch.queue_declare("q".into(), Default::default(), FieldTable::default()))
        .await
        .unwrap();
    assert_amqp_error(
        within(ch.queue_bind(
            "q".into(),
            "hx".into(),
            "".into(),
            Default::default(),
            table(&[("x-match", long_str("foo"))]),
        ))
        .await,
        406,
        "PRECONDITION_FAILED - Invalid x-match field value <<\"foo\">>; expected all, any, all-with-x, or any-with-x",
    );
}

#[tokio::test]
async fn exchange_to_exchange_bindings_route_once_per_queue_and_survive_cycles() {
    let broker = Broker::start().await;
    let (_c, ch) = confirming(&broker).await;
    declare(&ch, "src", ExchangeKind::Direct).await;
    declare(&ch, "mid", ExchangeKind::Topic).await;
    declare(&ch, "loop", ExchangeKind::Fanout).await;
    within(ch.exchange_bind(
        "mid".into(),
        "src".into(),
        "k".into(),
        Default::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    within(ch.exchange_bind(
        "loop".into(),
        "mid".into(),
        "#".into(),
        Default::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    within(ch.exchange_bind(
        "mid".into(),
        "loop".into(),
        "".into(),
        Default::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    queue_bound(&ch, "end", "mid", "k", FieldTable::default()).await;
    queue_bound(&ch, "end", "loop", "", FieldTable::default()).await;
    queue_bound(&ch, "end", "src", "k", FieldTable::default()).await;
    publish_confirmed(&ch, "src", "k", b"once", Default::default()).await;
    assert_eq!(count(&ch, "end").await, 1);
    let got = within(ch.basic_get("end".into(), Default::default()))
        .await
        .unwrap()
        .unwrap();
    // Deliveries name the exchange the message was published to.
    assert_eq!(got.delivery.exchange.as_str(), "src");
    assert_eq!(got.delivery.routing_key.as_str(), "k");
    // Unbinding cuts the path.
    within(ch.exchange_unbind(
        "mid".into(),
        "src".into(),
        "k".into(),
        Default::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    within(ch.queue_unbind(
        "end".into(),
        "src".into(),
        "k".into(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    publish_confirmed(&ch, "src", "k", b"gone", Default::default()).await;
    assert_eq!(count(&ch, "end").await, 0);
}

#[tokio::test]
async fn same_as_rabbitmq_e2e_binding_to_a_missing_exchange_is_404() {
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    declare(&ch, "here", ExchangeKind::Direct).await;
    assert_amqp_error(
        within(ch.exchange_bind(
            "here".into(),
            "not-here".into(),
            "".into(),
            Default::default(),
            FieldTable::default(),
        ))
        .await,
        404,
        "NOT_FOUND - no exchange 'not-here' in vhost '/'",
    );
}

#[tokio::test]
async fn same_as_rabbitmq_auto_delete_exchanges_go_with_their_last_binding() {
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    within(ch.exchange_declare(
        "ad".into(),
        ExchangeKind::Fanout,
        ExchangeDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
        FieldTable::default(),
    ))
    .await
    .unwrap();
    queue_bound(&ch, "adq", "ad", "", FieldTable::default()).await;
    within(ch.queue_unbind("adq".into(), "ad".into(), "".into(), FieldTable::default()))
        .await
        .unwrap();
    assert_amqp_error(
        within(ch.exchange_declare(
            "ad".into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ))
        .await,
        404,
        "NOT_FOUND - no exchange 'ad' in vhost '/'",
    );
}

#[tokio::test]
async fn alternate_exchange_takes_what_nothing_else_matched() {
    let broker = Broker::start().await;
    let (_c, ch) = confirming(&broker).await;
    declare(&ch, "ae", ExchangeKind::Fanout).await;
    queue_bound(&ch, "unrouted", "ae", "", FieldTable::default()).await;
    within(ch.exchange_declare(
        "main".into(),
        ExchangeKind::Direct,
        Default::default(),
        table(&[("alternate-exchange", long_str("ae"))]),
    ))
    .await
    .unwrap();
    queue_bound(&ch, "routed", "main", "yes", FieldTable::default()).await;
    publish_confirmed(&ch, "main", "yes", b"1", Default::default()).await;
    publish_confirmed(&ch, "main", "no", b"2", Default::default()).await;
    assert_eq!(count(&ch, "routed").await, 1);
    assert_eq!(count(&ch, "unrouted").await, 1);
}

/// Same as RabbitMQ: a message passing two headers exchanges (an exchange-to-exchange
/// binding between them) is matched on its headers by both. The second one used to see no
/// headers, so the message was dropped.
#[tokio::test]
async fn same_as_rabbitmq_a_second_headers_exchange_on_the_route_sees_the_headers() {
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    within(ch.exchange_declare(
        "second-headers".into(),
        lapin::ExchangeKind::Headers,
        Default::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    let args = table(&[("x-match", long_str("all")), ("kind", long_str("invoice"))]);
    within(ch.exchange_bind(
        "second-headers".into(),
        "amq.headers".into(),
        "".into(),
        Default::default(),
        args.clone(),
    ))
    .await
    .unwrap();
    within(ch.queue_declare("invoices".into(), Default::default(), FieldTable::default()))
        .await
        .unwrap();
    within(ch.queue_bind(
        "invoices".into(),
        "second-headers".into(),
        "".into(),
        Default::default(),
        args,
    ))
    .await
    .unwrap();
    within(ch.basic_publish(
        "amq.headers".into(),
        "".into(),
        Default::default(),
        b"through both",
        lapin::BasicProperties::default().with_headers(table(&[("kind", long_str("invoice"))])),
    ))
    .await
    .unwrap();
    let got = get_eventually(&ch, "invoices").await;
    assert_eq!(got.delivery.data, b"through both");
}

/// A queue's bindings go with it, whatever arguments they carry: the vhost's reverse index
/// keeps them encoded now (from review: decoded, an array of 4,095 empty values took 130
/// KiB per binding), and decodes them to remove them from their exchanges.
#[tokio::test]
async fn a_deleted_queues_bindings_with_arguments_leave_their_exchanges() {
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    declare(&ch, "with-args", ExchangeKind::Direct).await;
    let nested = AMQPValue::FieldArray(vec![AMQPValue::Void; 100].into());
    let args = table(&[
        ("list", nested),
        ("n", AMQPValue::LongLongInt(-1)),
        ("s", long_str("x")),
    ]);
    queue_bound(&ch, "goes", "with-args", "k", args.clone()).await;
    queue_bound(&ch, "goes", "amq.headers", "", args).await;
    let vhost = broker.server.as_ref().unwrap().broker().vhost("/").unwrap();
    let count = |x: &str| vhost.exchange(x).map(|x| x.binding_count());
    assert_eq!(
        (count("with-args"), count("amq.headers")),
        (Some(1), Some(1))
    );
    within(ch.queue_delete("goes".into(), Default::default()))
        .await
        .unwrap();
    assert_eq!(
        (count("with-args"), count("amq.headers")),
        (Some(0), Some(0))
    );
}

/// What bindings keep is held against the broker's topology budget while they live (from
/// review: it was counted nowhere, so a client could fill memory with bindings), and given
/// back when they go. (It was charged to the memory gauge, by which queues page their
/// backlogs out; paging gives none of it back.)
#[tokio::test]
async fn bindings_are_held_against_the_topology_budget_while_they_live() {
    let broker = Broker::start().await;
    let topology = broker.topology();
    let (_c, ch) = broker.channel().await;
    within(ch.queue_declare("wide".into(), Default::default(), FieldTable::default()))
        .await
        .unwrap();
    let before = topology.held_bytes();
    let wide = AMQPValue::FieldArray(vec![AMQPValue::Void; 4090].into());
    for i in 0..100 {
        let args = table(&[("x-match", long_str("any")), ("a", wide.clone())]);
        within(ch.queue_bind(
            "wide".into(),
            "amq.headers".into(),
            format!("k{i}").as_str().into(),
            Default::default(),
            args,
        ))
        .await
        .unwrap();
    }
    let bound = topology.held_bytes();
    assert!(
        bound >= before + 100 * 4090 * 16,
        "100 bindings of 4,090 values each, decoded for matching: {before} -> {bound}"
    );
    within(ch.queue_delete("wide".into(), Default::default()))
        .await
        .unwrap();
    let after = topology.held_bytes();
    assert!(
        after < before + (1 << 20),
        "given back: {before} -> {bound} -> {after}"
    );
}
