//! Direct reply-to (`amq.rabbitmq.reply-to`): RPC replies without a reply queue, as RabbitMQ
//! 3.10 does them.

mod common;

use common::*;
use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Consumer};

const PSEUDO: &str = "amq.rabbitmq.reply-to";

fn no_ack() -> BasicConsumeOptions {
    BasicConsumeOptions {
        no_ack: true,
        ..Default::default()
    }
}

async fn reply_consumer(ch: &Channel, tag: &str) -> Consumer {
    within(ch.basic_consume(PSEUDO.into(), tag.into(), no_ack(), FieldTable::default()))
        .await
        .expect("reply consumer")
}

/// Publishes a request to `queue` asking for a direct reply; returns the reply name the
/// responder sees.
async fn request(requester: &Channel, responder: &Channel, queue: &str, body: &[u8]) -> String {
    within(
        requester.basic_publish(
            "".into(),
            queue.into(),
            Default::default(),
            body,
            BasicProperties::default()
                .with_reply_to(PSEUDO.into())
                .with_correlation_id("c1".into()),
        ),
    )
    .await
    .unwrap();
    let got = within(responder.basic_get(queue.into(), BasicGetOptions { no_ack: true }))
        .await
        .unwrap()
        .expect("the request arrived");
    got.delivery
        .properties
        .reply_to()
        .as_ref()
        .expect("reply_to")
        .to_string()
}

async fn reply(responder: &Channel, reply_to: &str, body: &[u8]) {
    within(responder.basic_publish(
        "".into(),
        reply_to.into(),
        Default::default(),
        body,
        BasicProperties::default().with_correlation_id("c1".into()),
    ))
    .await
    .unwrap();
}

#[tokio::test]
async fn same_as_rabbitmq_an_rpc_round_trip_through_direct_reply_to() {
    let broker = Broker::start().await;
    let (_c1, requester) = broker.channel().await;
    let (_c2, responder) = broker.channel().await;
    within(responder.queue_declare("rpc".into(), Default::default(), FieldTable::default()))
        .await
        .unwrap();
    let mut replies = reply_consumer(&requester, "replies").await;

    let reply_to = request(&requester, &responder, "rpc", b"ping").await;
    assert!(
        reply_to.starts_with("amq.rabbitmq.reply-to.") && reply_to.len() > PSEUDO.len() + 20,
        "the broker names the reply consumer: {reply_to}"
    );
    reply(&responder, &reply_to, b"pong").await;
    reply(&responder, &reply_to, b"pong again").await;

    let first = within(replies.next()).await.unwrap().unwrap();
    assert_eq!(first.data, b"pong");
    assert_eq!(first.exchange.as_str(), "");
    assert_eq!(first.routing_key.as_str(), reply_to);
    assert!(!first.redelivered);
    assert_eq!(
        first
            .properties
            .correlation_id()
            .as_ref()
            .map(|c| c.as_str()),
        Some("c1")
    );
    let second = within(replies.next()).await.unwrap().unwrap();
    assert_eq!(second.data, b"pong again");
    // Replies do not take delivery tags: both carry the channel's next one.
    assert_eq!((first.delivery_tag, second.delivery_tag), (1, 1));

    // The same reply name for every request while the consumer lives.
    assert_eq!(
        request(&requester, &responder, "rpc", b"ping").await,
        reply_to
    );
}

#[tokio::test]
async fn same_as_rabbitmq_a_request_without_a_reply_consumer_closes_the_channel() {
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    within(ch.confirm_select(Default::default())).await.unwrap();
    assert_publish_refused(
        &ch,
        "",
        "anywhere",
        b"x",
        BasicProperties::default().with_reply_to(PSEUDO.into()),
        406,
        "PRECONDITION_FAILED - fast reply consumer does not exist",
    )
    .await;
}

#[tokio::test]
async fn same_as_rabbitmq_reply_consumers_are_no_ack_and_one_per_channel() {
    let broker = Broker::start().await;
    let conn = broker.connect().await;
    let ch = within(conn.create_channel()).await.unwrap();
    assert_amqp_error(
        within(ch.basic_consume(
            PSEUDO.into(),
            "acking".into(),
            Default::default(),
            FieldTable::default(),
        ))
        .await,
        406,
        "PRECONDITION_FAILED - reply consumer cannot acknowledge",
    );
    let ch = within(conn.create_channel()).await.unwrap();
    let _first = reply_consumer(&ch, "first").await;
    assert_amqp_error(
        within(ch.basic_consume(
            PSEUDO.into(),
            "second".into(),
            no_ack(),
            FieldTable::default(),
        ))
        .await,
        406,
        "PRECONDITION_FAILED - reply consumer already set",
    );
    // Other channels each have their own.
    let other = within(conn.create_channel()).await.unwrap();
    let _theirs = reply_consumer(&other, "theirs").await;
}

#[tokio::test]
async fn same_as_rabbitmq_reply_names_can_be_declared_while_their_consumer_lives() {
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    let (_c2, responder) = broker.channel().await;
    let pseudo = within(ch.queue_declare(PSEUDO.into(), Default::default(), FieldTable::default()))
        .await
        .unwrap();
    assert_eq!(
        (
            pseudo.name().as_str(),
            pseudo.message_count(),
            pseudo.consumer_count()
        ),
        (PSEUDO, 0, 1)
    );
    within(responder.queue_declare("rpc".into(), Default::default(), FieldTable::default()))
        .await
        .unwrap();
    let _replies = reply_consumer(&ch, "replies").await;
    let name = request(&ch, &responder, "rpc", b"ping").await;
    let live = within(responder.queue_declare(
        name.as_str().into(),
        QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    ))
    .await
    .unwrap();
    assert_eq!((live.message_count(), live.consumer_count()), (0, 1));

    within(ch.basic_cancel("replies".into(), Default::default()))
        .await
        .unwrap();
    assert_amqp_error(
        within(responder.queue_declare(
            name.as_str().into(),
            Default::default(),
            FieldTable::default(),
        ))
        .await,
        404,
        &format!("NOT_FOUND - no queue '{name}' in vhost '/'"),
    );
    let (_c3, other) = broker.channel().await;
    assert_amqp_error(
        within(other.queue_declare(
            "amq.rabbitmq.reply-tox".into(),
            Default::default(),
            FieldTable::default(),
        ))
        .await,
        404,
        "NOT_FOUND - no queue 'amq.rabbitmq.reply-tox' in vhost '/'",
    );
}

#[tokio::test]
async fn same_as_rabbitmq_a_mandatory_reply_is_delivered_and_also_returned() {
    let broker = Broker::start().await;
    let (_c1, requester) = broker.channel().await;
    let (_c2, responder) = broker.channel().await;
    within(responder.queue_declare("rpc".into(), Default::default(), FieldTable::default()))
        .await
        .unwrap();
    within(responder.confirm_select(Default::default()))
        .await
        .unwrap();
    let mut replies = reply_consumer(&requester, "replies").await;
    let reply_to = request(&requester, &responder, "rpc", b"ping").await;
    let confirm = within(
        within(responder.basic_publish(
            "".into(),
            reply_to.as_str().into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            b"pong",
            Default::default(),
        ))
        .await
        .unwrap(),
    )
    .await
    .unwrap();
    assert!(confirm.is_ack());
    let returned = confirm.take_message().expect("returned");
    assert_eq!(
        (returned.reply_code, returned.reply_text.as_str()),
        (312, "NO_ROUTE")
    );
    let delivered = within(replies.next()).await.unwrap().unwrap();
    assert_eq!(delivered.data, b"pong");
}

#[tokio::test]
async fn same_as_rabbitmq_replies_to_a_gone_consumer_or_through_another_exchange_are_dropped() {
    let broker = Broker::start().await;
    let (_c1, requester) = broker.channel().await;
    let (_c2, responder) = broker.channel().await;
    within(responder.queue_declare("rpc".into(), Default::default(), FieldTable::default()))
        .await
        .unwrap();
    let mut replies = reply_consumer(&requester, "replies").await;
    let reply_to = request(&requester, &responder, "rpc", b"ping").await;
    // Through amq.direct nothing is bound under that name: not delivered.
    within(responder.basic_publish(
        "amq.direct".into(),
        reply_to.as_str().into(),
        Default::default(),
        b"wrong way",
        Default::default(),
    ))
    .await
    .unwrap();
    reply(&responder, &reply_to, b"right way").await;
    let got = within(replies.next()).await.unwrap().unwrap();
    assert_eq!(got.data, b"right way");

    // The requester goes away; later replies vanish and the responder carries on.
    drop(replies);
    within(requester.close(200, "bye".into())).await.unwrap();
    reply(&responder, &reply_to, b"too late").await;
    within(responder.confirm_select(Default::default()))
        .await
        .unwrap();
    let confirm = within(
        within(responder.basic_publish(
            "".into(),
            reply_to.as_str().into(),
            Default::default(),
            b"too late, confirmed",
            Default::default(),
        ))
        .await
        .unwrap(),
    )
    .await
    .unwrap();
    assert!(confirm.is_ack(), "a dropped reply is still confirmed");
}

/// Same as RabbitMQ, which routes the set of a message's keys: a reply that names the reply
/// consumer again in CC and many times in BCC is delivered once (each name was delivered).
#[tokio::test]
async fn same_as_rabbitmq_a_reply_named_many_times_is_delivered_once() {
    use lapin::types::{AMQPValue, FieldArray, LongString};
    let broker = Broker::start().await;
    let (_c1, requester) = broker.channel().await;
    let (_c2, responder) = broker.channel().await;
    within(responder.queue_declare("rpc-many".into(), Default::default(), FieldTable::default()))
        .await
        .unwrap();
    let mut replies = reply_consumer(&requester, "replies").await;
    let reply_to = request(&requester, &responder, "rpc-many", b"ping").await;
    let names = |n: usize| {
        let name = AMQPValue::LongString(LongString::from(reply_to.as_str()));
        AMQPValue::FieldArray(FieldArray::from(vec![name; n]))
    };
    let mut headers = FieldTable::default();
    headers.insert("CC".into(), names(1));
    headers.insert("BCC".into(), names(100));
    within(responder.basic_publish(
        "".into(),
        reply_to.as_str().into(),
        Default::default(),
        b"pong",
        BasicProperties::default().with_headers(headers),
    ))
    .await
    .unwrap();
    reply(&responder, &reply_to, b"second").await;
    let first = within(replies.next()).await.unwrap().unwrap();
    assert_eq!(first.data, b"pong");
    let next = within(replies.next()).await.unwrap().unwrap();
    assert_eq!(next.data, b"second", "the first reply came once");
}

/// Same as RabbitMQ (observed on 3.10.8): a reply published in a transaction goes to its
/// requester at once, not at the commit, and a rollback does not take it back. (Lepus held
/// it to the commit, and a rollback dropped it.) The transaction's other publishes still
/// wait for the commit.
#[tokio::test]
async fn same_as_rabbitmq_a_reply_in_a_transaction_goes_at_once() {
    let broker = Broker::start().await;
    let (_c1, requester) = broker.channel().await;
    let (_c2, responder) = broker.channel().await;
    within(responder.queue_declare("rpc-tx".into(), Default::default(), FieldTable::default()))
        .await
        .unwrap();
    within(responder.queue_declare("audit".into(), Default::default(), FieldTable::default()))
        .await
        .unwrap();
    let mut replies = reply_consumer(&requester, "replies").await;
    within(responder.tx_select()).await.unwrap();

    let reply_to = request(&requester, &responder, "rpc-tx", b"first").await;
    reply(&responder, &reply_to, b"before commit").await;
    reply(&responder, "audit", b"held").await;
    let got = within(replies.next()).await.unwrap().unwrap();
    assert_eq!(got.data, b"before commit");
    assert_eq!(message_count(&requester, "audit").await, 0);
    within(responder.tx_commit()).await.unwrap();
    assert_eq!(message_count(&requester, "audit").await, 1);

    let reply_to = request(&requester, &responder, "rpc-tx", b"second").await;
    reply(&responder, &reply_to, b"rolled back").await;
    within(responder.tx_rollback()).await.unwrap();
    let got = within(replies.next()).await.unwrap().unwrap();
    assert_eq!(got.data, b"rolled back");
}

/// Same as RabbitMQ, whose default exchange hands a reply name to its consumer whoever
/// routes through it: a message dead-lettered through the default exchange under a reply
/// name (here an RPC's "no answer in time" notice: a queue whose messages expire into the
/// requester's reply name) reaches the requester, with its `x-death` story. (Lepus
/// dropped it.)
#[tokio::test]
async fn same_as_rabbitmq_a_dead_letter_routed_to_a_reply_name_reaches_its_consumer() {
    use lapin::types::{AMQPValue, LongString};
    let broker = Broker::start().await;
    let (_c1, requester) = broker.channel().await;
    let (_c2, responder) = broker.channel().await;
    within(responder.queue_declare("rpc-dl".into(), Default::default(), FieldTable::default()))
        .await
        .unwrap();
    let mut replies = reply_consumer(&requester, "replies").await;
    let reply_to = request(&requester, &responder, "rpc-dl", b"ping").await;

    let mut args = FieldTable::default();
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(LongString::from("")),
    );
    args.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(LongString::from(reply_to.as_str())),
    );
    within(responder.queue_declare("deadline".into(), Default::default(), args))
        .await
        .unwrap();
    within(
        responder.basic_publish(
            "".into(),
            "deadline".into(),
            Default::default(),
            b"timed out",
            BasicProperties::default()
                .with_correlation_id("c1".into())
                .with_expiration("0".into()),
        ),
    )
    .await
    .unwrap();

    let got = within(replies.next()).await.unwrap().unwrap();
    assert_eq!(got.data, b"timed out");
    assert_eq!(got.exchange.as_str(), "");
    assert_eq!(got.routing_key.as_str(), reply_to);
    let headers = got.properties.headers().as_ref().expect("headers");
    assert!(
        headers.inner().contains_key("x-death"),
        "a dead letter: {headers:?}"
    );
    assert_eq!(message_count(&requester, "deadline").await, 0);
}

/// Same as RabbitMQ: a management publish to the default exchange under a reply name
/// reaches the reply consumer, and answers `routed: false` (no queue took it), as a
/// client's mandatory reply is also returned.
#[tokio::test]
async fn same_as_rabbitmq_a_management_publish_to_a_reply_name_reaches_its_consumer() {
    let mut config = Config::for_tests();
    config.management_listen = Some("127.0.0.1:0".parse().unwrap());
    let broker = Broker::start_with(config).await;
    let addr = broker
        .server
        .as_ref()
        .and_then(|s| s.management_addr())
        .expect("management listener");
    let api = common::http::Api::new(addr, "guest", "guest");
    let (_c1, requester) = broker.channel().await;
    let (_c2, responder) = broker.channel().await;
    within(responder.queue_declare("rpc-api".into(), Default::default(), FieldTable::default()))
        .await
        .unwrap();
    let mut replies = reply_consumer(&requester, "replies").await;
    let reply_to = request(&requester, &responder, "rpc-api", b"ping").await;

    let published = api
        .post(
            "/api/exchanges/%2F/amq.default/publish",
            serde_json::json!({"properties": {"correlation_id": "c1"}, "routing_key": reply_to,
                               "payload": "from the operator", "payload_encoding": "string"}),
        )
        .await;
    assert_eq!(published.json(), serde_json::json!({"routed": false}));
    let got = within(replies.next()).await.unwrap().unwrap();
    assert_eq!(got.data, b"from the operator");
    assert_eq!(got.routing_key.as_str(), reply_to);
}
