//! Permissions, as RabbitMQ's internal authorisation backend enforces them: vhost access at
//! connection.open, configure/write/read patterns on every operation RabbitMQ checks, topic
//! permissions on routing keys, the user_id property and the impersonator tag. Every text was
//! observed from RabbitMQ 3.10.8 with the same grants.

mod common;

use common::{
    Broker, amqp_error, assert_amqp_error, assert_publish_refused, long_str, table, within,
};
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ExchangeKind};

/// A broker where `bob` may configure and read `bob*`, write `bob*`, the default exchange
/// and `amq.topic`, read `amq.topic`, with topic permissions on `amq.topic`: publish
/// `{username}.*`, bind `r.*`. `imp` may do anything and is an impersonator; `nob` has no
/// permissions at all.
async fn broker_with_bob() -> Broker {
    let broker = Broker::start().await;
    let b = admin(&broker);
    for u in ["bob", "imp", "nob"] {
        b.add_user(u, u).expect("new user");
    }
    b.set_permissions(
        "bob",
        "/",
        "^bob",
        "^(bob|amq\\.default|amq\\.topic)",
        "^(bob|amq\\.topic)",
    )
    .unwrap();
    b.set_topic_permissions("bob", "/", "amq.topic", "^{username}\\.", "^r\\.")
        .unwrap();
    b.set_permissions("imp", "/", ".*", ".*", ".*").unwrap();
    b.set_user_tags("imp", vec!["impersonator".into()]).unwrap();
    // Something bob may not touch.
    let (_c, ch) = broker.channel().await;
    within(ch.queue_declare("other".into(), Default::default(), FieldTable::default()))
        .await
        .unwrap();
    within(ch.exchange_declare(
        "ox".into(),
        ExchangeKind::Direct,
        Default::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    broker
}

async fn connect_as(broker: &Broker, user: &str) -> lapin::Result<Connection> {
    let uri = format!("amqp://{user}:{user}@{}/%2f", broker.addr);
    within(Connection::connect(&uri, Default::default())).await
}

/// Runs an operation on a fresh channel of bob's and asserts the broker refused it with this
/// code and text.
macro_rules! refuse {
    ($broker:expr, |$ch:ident| $op:expr, $code:expr, $text:expr) => {{
        let (_c, $ch) = bob($broker).await;
        assert_amqp_error(within($op).await, $code, $text);
    }};
}

/// The in-process broker's state, to grant and revoke as an operator would.
fn admin(broker: &Broker) -> std::sync::Arc<lepus::broker::Broker> {
    broker.server.as_ref().unwrap().broker().clone()
}

async fn declare(ch: &lapin::Channel, queue: &str) {
    within(ch.queue_declare(queue.into(), Default::default(), FieldTable::default()))
        .await
        .expect("declared");
}

/// Puts a channel in confirm mode.
async fn confirming(ch: &lapin::Channel) {
    within(ch.confirm_select(Default::default())).await.unwrap();
}

/// Publishes `x` and asserts the broker confirmed it.
async fn publish_acked(
    ch: &lapin::Channel,
    exchange: &str,
    routing_key: &str,
    properties: BasicProperties,
) {
    let confirm = within(ch.basic_publish(
        exchange.into(),
        routing_key.into(),
        Default::default(),
        b"x",
        properties,
    ))
    .await
    .expect("the publish is written");
    assert!(within(confirm).await.unwrap().is_ack(), "confirmed");
}

async fn bob(broker: &Broker) -> (Connection, lapin::Channel) {
    let conn = connect_as(broker, "bob").await.expect("bob connects");
    let ch = within(conn.create_channel()).await.expect("channel opens");
    (conn, ch)
}

fn refused(kind: &str, name: &str) -> String {
    format!("ACCESS_REFUSED - access to {kind} '{name}' in vhost '/' refused for user 'bob'")
}

/// The broker and its other users are undisturbed by bob's refusals.
async fn assert_witness_healthy(broker: &Broker) {
    let (_c, ch) = broker.channel().await;
    within(ch.queue_declare(
        "other".into(),
        QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    ))
    .await
    .expect("the witness still works");
}

#[tokio::test]
async fn same_as_rabbitmq_a_user_without_permissions_cannot_open_the_vhost() {
    let broker = broker_with_bob().await;
    assert_amqp_error(
        connect_as(&broker, "nob").await,
        530,
        "NOT_ALLOWED - access to vhost '/' refused for user 'nob'",
    );
    // Granting takes effect for the next open; revoking too.
    let b = admin(&broker);
    b.set_permissions("nob", "/", "", "", "").unwrap();
    connect_as(&broker, "nob")
        .await
        .expect("empty permissions still open the vhost");
    b.clear_permissions("nob", "/").unwrap();
    assert!(connect_as(&broker, "nob").await.is_err());
    assert_witness_healthy(&broker).await;
}

#[tokio::test]
async fn same_as_rabbitmq_declares_need_configure() {
    let broker = broker_with_bob().await;
    let declare = |name: &'static str, opts: QueueDeclareOptions, args: FieldTable| {
        let broker = &broker;
        async move {
            let (_c, ch) = bob(broker).await;
            within(ch.queue_declare(name.into(), opts, args))
                .await
                .map(|q| q.name().to_string())
        }
    };
    assert_amqp_error(
        declare("other", Default::default(), FieldTable::default()).await,
        403,
        &refused("queue", "other"),
    );
    assert_eq!(
        declare("bobq", Default::default(), FieldTable::default())
            .await
            .unwrap(),
        "bobq"
    );
    // The reserved prefix is refused before permissions are looked at.
    assert_amqp_error(
        declare("amq.x", Default::default(), FieldTable::default()).await,
        403,
        "ACCESS_REFUSED - queue name 'amq.x' contains reserved prefix 'amq.*'",
    );
    // A server-named queue needs configure on the name the server chose.
    let err = declare(
        "",
        QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect_err("refused");
    let (code, text) = amqp_error(&err).unwrap();
    assert_eq!(code, 403);
    assert!(
        text.starts_with("ACCESS_REFUSED - access to queue 'amq.gen-"),
        "{text}"
    );
    // A passive declare needs nothing.
    declare(
        "other",
        QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("passive declares are not checked");
    // A dead-letter exchange needs write on it.
    assert_amqp_error(
        declare(
            "bobq2",
            Default::default(),
            table(&[("x-dead-letter-exchange", long_str("dx"))]),
        )
        .await,
        403,
        &refused("exchange", "dx"),
    );

    let (_c, ch) = bob(&broker).await;
    let x = |name: &'static str, kind: ExchangeKind, args: FieldTable| {
        let ch = ch.clone();
        async move { within(ch.exchange_declare(name.into(), kind, Default::default(), args)).await }
    };
    assert_amqp_error(
        x("ox", ExchangeKind::Direct, FieldTable::default()).await,
        403,
        &refused("exchange", "ox"),
    );
    let (_c, ch) = bob(&broker).await;
    let x2 = |name: &'static str, args: FieldTable| {
        let ch = ch.clone();
        async move {
            within(ch.exchange_declare(name.into(), ExchangeKind::Direct, Default::default(), args))
                .await
        }
    };
    assert_amqp_error(
        x2("bobx", table(&[("alternate-exchange", long_str("ae"))])).await,
        403,
        &refused("exchange", "ae"),
    );
    let (_c, ch) = bob(&broker).await;
    within(ch.exchange_declare(
        "bobx".into(),
        ExchangeKind::Direct,
        Default::default(),
        FieldTable::default(),
    ))
    .await
    .expect("bob may declare bobx");
    within(ch.exchange_declare(
        "amq.direct".into(),
        ExchangeKind::Direct,
        ExchangeDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    ))
    .await
    .expect("passive declares are not checked");
    assert_witness_healthy(&broker).await;
}

#[tokio::test]
async fn same_as_rabbitmq_deletes_need_configure_and_system_exchanges_are_refused_first() {
    let broker = broker_with_bob().await;
    refuse!(
        &broker,
        |ch| ch.queue_delete("other".into(), Default::default()),
        403,
        &refused("queue", "other")
    );
    refuse!(
        &broker,
        |ch| ch.queue_delete("zz".into(), Default::default()),
        403,
        &refused("queue", "zz")
    );
    let (_c, ch) = bob(&broker).await;
    within(ch.queue_delete("bobzz".into(), Default::default()))
        .await
        .expect("deleting a missing queue bob may configure is fine");
    assert_amqp_error(
        within(ch.exchange_delete("amq.direct".into(), Default::default())).await,
        403,
        "ACCESS_REFUSED - deletion of system exchange 'amq.direct' in vhost '/' not allowed",
    );
    refuse!(
        &broker,
        |ch| ch.exchange_delete("ox".into(), Default::default()),
        403,
        &refused("exchange", "ox")
    );
    assert_witness_healthy(&broker).await;
}

#[tokio::test]
async fn same_as_rabbitmq_publish_needs_write_before_the_exchange_is_looked_up() {
    let broker = broker_with_bob().await;
    let (_c, ch) = bob(&broker).await;
    declare(&ch, "bobq").await;
    confirming(&ch).await;
    // The default exchange is checked as amq.default.
    publish_acked(&ch, "", "bobq", Default::default()).await;
    assert_publish_refused(
        &ch,
        "amq.direct",
        "k",
        b"x",
        Default::default(),
        403,
        &refused("exchange", "amq.direct"),
    )
    .await;
    let (_c, ch) = bob(&broker).await;
    confirming(&ch).await;
    assert_publish_refused(
        &ch,
        "nosuch",
        "k",
        b"x",
        Default::default(),
        403,
        &refused("exchange", "nosuch"),
    )
    .await;
    let (_c, ch) = bob(&broker).await;
    confirming(&ch).await;
    assert_publish_refused(
        &ch,
        "bobmissing",
        "k",
        b"x",
        Default::default(),
        404,
        "NOT_FOUND - no exchange 'bobmissing' in vhost '/'",
    )
    .await;
    assert_witness_healthy(&broker).await;
}

#[tokio::test]
async fn same_as_rabbitmq_consume_get_and_purge_need_read() {
    let broker = broker_with_bob().await;
    refuse!(
        &broker,
        |ch| ch.basic_get("other".into(), Default::default()),
        403,
        &refused("queue", "other")
    );
    refuse!(
        &broker,
        |ch| ch.basic_get("nosuchq".into(), Default::default()),
        403,
        &refused("queue", "nosuchq")
    );
    let (_c, ch) = bob(&broker).await;
    assert_amqp_error(
        within(ch.basic_consume(
            "other".into(),
            "".into(),
            Default::default(),
            FieldTable::default(),
        ))
        .await,
        403,
        &refused("queue", "other"),
    );
    refuse!(
        &broker,
        |ch| ch.queue_purge("other".into(), Default::default()),
        403,
        &refused("queue", "other")
    );
    // Direct reply-to is not a queue and needs nothing.
    let (_c, ch) = bob(&broker).await;
    within(ch.basic_consume(
        "amq.rabbitmq.reply-to".into(),
        "".into(),
        BasicConsumeOptions {
            no_ack: true,
            ..Default::default()
        },
        FieldTable::default(),
    ))
    .await
    .expect("direct reply-to needs no permission");
    assert_witness_healthy(&broker).await;
}

#[tokio::test]
async fn same_as_rabbitmq_bindings_need_write_on_the_destination_and_read_on_the_source() {
    let broker = broker_with_bob().await;
    let (_c, ch) = bob(&broker).await;
    declare(&ch, "bobq").await;
    within(ch.exchange_declare(
        "bobx".into(),
        ExchangeKind::Direct,
        Default::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    within(ch.queue_bind(
        "bobq".into(),
        "bobx".into(),
        "k".into(),
        Default::default(),
        FieldTable::default(),
    ))
    .await
    .expect("bob may bind his queue to his exchange");
    let bind = |queue: &'static str, exchange: &'static str| {
        let broker = &broker;
        async move {
            let (_c, ch) = bob(broker).await;
            within(ch.queue_bind(
                queue.into(),
                exchange.into(),
                "k".into(),
                Default::default(),
                FieldTable::default(),
            ))
            .await
        }
    };
    assert_amqp_error(
        bind("bobq", "amq.direct").await,
        403,
        &refused("exchange", "amq.direct"),
    );
    assert_amqp_error(bind("other", "bobx").await, 403, &refused("queue", "other"));
    assert_amqp_error(
        bind("bobq", "").await,
        403,
        "ACCESS_REFUSED - operation not permitted on the default exchange",
    );
    assert_amqp_error(
        bind("bobq", "bobnox").await,
        404,
        "NOT_FOUND - no exchange 'bobnox' in vhost '/'",
    );
    let (_c, ch) = bob(&broker).await;
    assert_amqp_error(
        within(ch.queue_unbind(
            "bobq".into(),
            "amq.direct".into(),
            "k".into(),
            FieldTable::default(),
        ))
        .await,
        403,
        &refused("exchange", "amq.direct"),
    );
    let (_c, ch) = bob(&broker).await;
    assert_amqp_error(
        within(ch.exchange_bind(
            "bobx".into(),
            "amq.direct".into(),
            "k".into(),
            Default::default(),
            FieldTable::default(),
        ))
        .await,
        403,
        &refused("exchange", "amq.direct"),
    );
    assert_witness_healthy(&broker).await;
}

#[tokio::test]
async fn same_as_rabbitmq_topic_permissions_check_routing_keys() {
    let broker = broker_with_bob().await;
    let (_c, ch) = bob(&broker).await;
    declare(&ch, "bobq").await;
    confirming(&ch).await;
    publish_acked(&ch, "amq.topic", "bob.x", Default::default()).await; // {username} expands to bob
    let topic_refused = |key: &str| {
        format!(
            "ACCESS_REFUSED - access to topic '{key}' in exchange 'amq.topic' in vhost '/' refused for user 'bob'"
        )
    };
    assert_publish_refused(
        &ch,
        "amq.topic",
        "alice.x",
        b"x",
        Default::default(),
        403,
        &topic_refused("alice.x"),
    )
    .await;
    let (_c, ch) = bob(&broker).await;
    within(ch.queue_bind(
        "bobq".into(),
        "amq.topic".into(),
        "r.x".into(),
        Default::default(),
        FieldTable::default(),
    ))
    .await
    .expect("bob may bind r.*");
    assert_amqp_error(
        within(ch.queue_bind(
            "bobq".into(),
            "amq.topic".into(),
            "w.x".into(),
            Default::default(),
            FieldTable::default(),
        ))
        .await,
        403,
        &topic_refused("w.x"),
    );
    // Clearing the topic permissions allows every key again, on a channel that had cached
    // the refusal's neighbour route.
    let b = admin(&broker);
    let (_c, ch) = bob(&broker).await;
    confirming(&ch).await;
    publish_acked(&ch, "amq.topic", "bob.y", Default::default()).await;
    b.set_topic_permissions("bob", "/", "amq.topic", "^nobody$", "^r\\.")
        .unwrap();
    assert_publish_refused(
        &ch,
        "amq.topic",
        "bob.y",
        b"x",
        Default::default(),
        403,
        &topic_refused("bob.y"),
    )
    .await;
    b.clear_topic_permissions("bob", "/", None).unwrap();
    let (_c, ch) = bob(&broker).await;
    confirming(&ch).await;
    publish_acked(&ch, "amq.topic", "alice.x", Default::default()).await;
    assert_witness_healthy(&broker).await;
}

#[tokio::test]
async fn a_revoked_write_permission_stops_a_publisher_with_a_cached_route() {
    let broker = broker_with_bob().await;
    let b = admin(&broker);
    let (_c, ch) = bob(&broker).await;
    declare(&ch, "bobq").await;
    confirming(&ch).await;
    for _ in 0..3 {
        publish_acked(&ch, "", "bobq", Default::default()).await;
    }
    b.set_permissions("bob", "/", "^bob", "^bob", "^bob")
        .unwrap();
    assert_publish_refused(
        &ch,
        "",
        "bobq",
        b"x",
        Default::default(),
        403,
        &refused("exchange", "amq.default"),
    )
    .await;
}

#[tokio::test]
async fn same_as_rabbitmq_user_id_must_be_the_user_unless_an_impersonator() {
    let broker = broker_with_bob().await;
    let (_c, ch) = bob(&broker).await;
    declare(&ch, "bobq").await;
    confirming(&ch).await;
    assert_publish_refused(
        &ch,
        "",
        "bobq",
        b"x",
        BasicProperties::default().with_user_id("imp".into()),
        406,
        "PRECONDITION_FAILED - user_id property set to 'imp' but authenticated user was 'bob'",
    )
    .await;
    let conn = connect_as(&broker, "imp").await.unwrap();
    let ch = within(conn.create_channel()).await.unwrap();
    confirming(&ch).await;
    let confirm = within(ch.basic_publish(
        "".into(),
        "bobq".into(),
        Default::default(),
        b"x",
        BasicProperties::default().with_user_id("bob".into()),
    ))
    .await
    .unwrap();
    assert!(
        within(confirm).await.unwrap().is_ack(),
        "an impersonator may set any user_id"
    );
}

#[tokio::test]
async fn grants_survive_a_restart() {
    let mut config = lepus::config::Config::for_tests();
    let dir = config.data_dir.clone();
    let mut broker = Broker::start_with(config.clone()).await;
    {
        let b = admin(&broker);
        b.add_user("bob", "bob").unwrap();
        b.set_permissions("bob", "/", "^bob", "^bob", "^bob")
            .unwrap();
        b.set_topic_permissions("bob", "/", "amq.topic", "^x", "^y")
            .unwrap();
        b.set_user_tags("bob", vec!["monitoring".into()]).unwrap();
    }
    broker.stop().await;
    config.data_dir = dir;
    let broker = Broker::start_with(config).await;
    let b = admin(&broker);
    assert!(b.user("bob").unwrap().has_tag("monitoring"));
    let grants = b.access.grants("bob").expect("grants are back");
    assert_eq!(grants.vhosts["/"].write.source, "^bob");
    assert_eq!(grants.topics["/"]["amq.topic"].read.source, "^y");
    refuse!(
        &broker,
        |ch| ch.queue_declare("other".into(), Default::default(), FieldTable::default()),
        403,
        &refused("queue", "other")
    );
}

/// Same as RabbitMQ (`rabbit_connection_tracking` on `user_deleted`): deleting a user closes
/// its connections with 320 and says why; other users' connections stay. Before, they stayed
/// open, consuming, and a user created again under the name gave them its grants.
#[tokio::test]
async fn same_as_rabbitmq_deleting_a_user_closes_its_connections() {
    let broker = broker_with_bob().await;
    let mut guest = broker.raw().await;
    guest.handshake().await;
    guest.open_channel(1).await;
    let imp = connect_as(&broker, "imp").await.expect("imp connects");
    admin(&broker).delete_user("guest").unwrap();
    assert_eq!(
        guest.expect_connection_close().await,
        (
            320,
            "CONNECTION_FORCED - user 'guest' is deleted".into(),
            0,
            0
        )
    );
    within(imp.create_channel())
        .await
        .expect("imp's connection stays");
}

/// Same as RabbitMQ (PCRE): a pattern may use lookaround, as operators do to grant all but
/// some names. (Lepus refused these patterns before: `set_permissions` said they did not
/// compile, and one in imported definitions granted nothing.)
#[tokio::test]
async fn same_as_rabbitmq_a_pattern_with_lookahead_grants_all_but_what_it_excludes() {
    let broker = Broker::start().await;
    let b = admin(&broker);
    b.add_user("ops", "ops").unwrap();
    b.set_permissions("ops", "/", "^(?!secret-).*", ".*", ".*")
        .expect("lookaround compiles");
    let conn = connect_as(&broker, "ops").await.expect("ops connects");
    let ch = within(conn.create_channel()).await.unwrap();
    within(ch.queue_declare("orders".into(), Default::default(), FieldTable::default()))
        .await
        .expect("allowed");
    assert_amqp_error(
        within(ch.queue_declare(
            "secret-plans".into(),
            Default::default(),
            FieldTable::default(),
        ))
        .await,
        403,
        "ACCESS_REFUSED - access to queue 'secret-plans' in vhost '/' refused for user 'ops'",
    );
}

/// Regression (from review): the checks a new queue needs (read on it, write on its
/// dead-letter exchange) were made by the channel, and skipped when the queue existed as it
/// looked; were the queue deleted before the declare took the vhost's lock, the declare made
/// it unchecked, and bob had a queue dead-lettering into an exchange he may not write to.
/// The declare now makes them itself, under that lock, whenever it makes the queue, and
/// only then (same as RabbitMQ: an existing queue needs none).
#[tokio::test]
async fn a_declare_makes_the_new_queue_checks_exactly_when_it_makes_the_queue() {
    use lepus::broker::vhost::checks::{Check, no_checks};
    use lepus::broker::vhost::queues::QueueDeclare;
    let broker = broker_with_bob().await;
    let vhost = admin(&broker).vhost("/").expect("the default vhost");
    let declare = QueueDeclare {
        nowait: false,
        name: "bobq".into(),
        passive: false,
        durable: false,
        exclusive: false,
        auto_delete: false,
        arguments: table(&[("x-dead-letter-exchange", long_str("ox"))]),
    };
    let asked = std::sync::Mutex::new(Vec::new());
    let refuse = |checks: Vec<Check<'_>>| {
        let named = checks.iter().map(|(r, p)| format!("{p:?} {r:?}"));
        asked.lock().unwrap().extend(named);
        Err(lepus::amqp_error!(AccessRefused, "refused by the test"))
    };
    assert!(vhost.declare_queue(&declare, 0, &refuse).is_err());
    assert_eq!(
        *asked.lock().unwrap(),
        ["Read Queue(\"bobq\")", "Write Exchange(\"ox\")"]
    );
    assert!(
        vhost.queue("bobq").is_none(),
        "a refused declare makes nothing"
    );
    // Made by someone allowed to: found again, nothing is asked.
    assert!(vhost.declare_queue(&declare, 0, &no_checks).is_ok());
    assert!(vhost.declare_queue(&declare, 0, &refuse).is_ok());
    assert_eq!(asked.lock().unwrap().len(), 2);
}

/// Same as RabbitMQ (`rabbit_channel`, from review): a new queue meets the vhost's queue
/// limit before the dead-letter exchange's permissions.
#[tokio::test]
async fn same_as_rabbitmq_the_queue_limit_comes_before_the_dead_letter_permissions() {
    let broker = broker_with_bob().await;
    let limits = lepus::store::definitions::VhostLimits {
        max_queues: Some(1),
        max_connections: None,
    };
    admin(&broker).set_vhost_limits("/", limits).unwrap();
    refuse!(
        &broker,
        |ch| ch.queue_declare(
            "bobq".into(),
            Default::default(),
            table(&[("x-dead-letter-exchange", long_str("ox"))])
        ),
        406,
        "PRECONDITION_FAILED - cannot declare queue 'bobq': queue limit in vhost '/' (1) is reached"
    );
}
