//! Policies from the definitions file (RabbitMQ's export format): they configure queues and
//! exchanges by name pattern, and declare arguments win where RabbitMQ says they do.

mod common;

use std::path::Path;

use amq_protocol::types::{AMQPValue, FieldTable};
use common::*;
use lapin::options::*;
use lapin::{BasicProperties, Channel, ExchangeKind};

/// Starts a broker once so the data directory exists, then adds `policies` to its
/// definitions file while it is stopped, as an operator would.
async fn data_dir_with_policies(policies: serde_json::Value) -> std::path::PathBuf {
    let dir = temp_dir("policies");
    let mut config = Config::for_tests();
    config.data_dir = dir.clone();
    let mut broker = Broker::start_with(config).await;
    broker.stop().await;
    let path = dir.join("definitions.json");
    let mut defs: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("definitions.json")).unwrap();
    defs["policies"] = policies;
    std::fs::write(&path, serde_json::to_vec_pretty(&defs).unwrap()).unwrap();
    dir
}

async fn broker_in(dir: &Path) -> Broker {
    let mut config = Config::for_tests();
    config.data_dir = dir.to_owned();
    Broker::start_with(config).await
}

async fn wait_for_message(ch: &Channel, queue: &str) -> lapin::message::BasicGetMessage {
    within(async {
        loop {
            if let Some(m) = ch
                .basic_get(queue.into(), BasicGetOptions { no_ack: true })
                .await
                .unwrap()
            {
                return m;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await
}

#[tokio::test]
async fn a_policy_gives_matching_queues_a_ttl_and_a_dead_letter_exchange() {
    let dir = data_dir_with_policies(serde_json::json!([{
        "vhost": "/", "name": "expire-fast", "pattern": "^fast\\.", "apply-to": "queues",
        "priority": 1, "definition": {"message-ttl": 20, "dead-letter-exchange": "dlx"}
    }]))
    .await;
    let broker = broker_in(&dir).await;
    let (_c, ch) = broker.channel().await;
    dead_letter_target(&ch, "dlx", "dlq").await;
    for q in ["fast.jobs", "slow.jobs"] {
        within(ch.queue_declare(q.into(), Default::default(), FieldTable::default()))
            .await
            .unwrap();
    }
    for q in ["fast.jobs", "slow.jobs"] {
        within(ch.basic_publish(
            "".into(),
            q.into(),
            Default::default(),
            q.as_bytes(),
            BasicProperties::default(),
        ))
        .await
        .unwrap();
    }
    let dead = wait_for_message(&ch, "dlq").await;
    assert_eq!(dead.delivery.data, b"fast.jobs");
    let slow = within(ch.queue_declare(
        "slow.jobs".into(),
        QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    ))
    .await
    .unwrap();
    assert_eq!(slow.message_count(), 1, "the policy does not match it");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn same_as_rabbitmq_the_smaller_max_length_wins_between_policy_and_argument() {
    let dir = data_dir_with_policies(serde_json::json!([{
        "vhost": "/", "name": "cap", "pattern": ".*", "apply-to": "queues",
        "priority": 0, "definition": {"max-length": 2}
    }]))
    .await;
    let broker = broker_in(&dir).await;
    let (_c, ch) = broker.channel().await;
    within(ch.queue_declare(
        "loose".into(),
        Default::default(),
        table(&[("x-max-length", AMQPValue::LongInt(10))]),
    ))
    .await
    .unwrap();
    for i in 0..4 {
        within(ch.basic_publish(
            "".into(),
            "loose".into(),
            Default::default(),
            format!("m{i}").as_bytes(),
            Default::default(),
        ))
        .await
        .unwrap();
    }
    let q = within(ch.queue_declare(
        "loose".into(),
        QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    ))
    .await
    .unwrap();
    assert_eq!(q.message_count(), 2);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_policy_can_give_an_exchange_its_alternate_exchange() {
    let dir = data_dir_with_policies(serde_json::json!([{
        "vhost": "/", "name": "ae", "pattern": "^orders$", "apply-to": "exchanges",
        "priority": 0, "definition": {"alternate-exchange": "unrouted"}
    }]))
    .await;
    let broker = broker_in(&dir).await;
    let (_c, ch) = broker.channel().await;
    for (x, kind) in [
        ("orders", ExchangeKind::Direct),
        ("unrouted", ExchangeKind::Fanout),
    ] {
        within(ch.exchange_declare(x.into(), kind, Default::default(), FieldTable::default()))
            .await
            .unwrap();
    }
    within(ch.queue_declare("lost".into(), Default::default(), FieldTable::default()))
        .await
        .unwrap();
    within(ch.queue_bind(
        "lost".into(),
        "unrouted".into(),
        "".into(),
        Default::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    within(ch.basic_publish(
        "orders".into(),
        "nobody".into(),
        Default::default(),
        b"stray",
        Default::default(),
    ))
    .await
    .unwrap();
    let m = wait_for_message(&ch, "lost").await;
    assert_eq!(m.delivery.data, b"stray");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Same as RabbitMQ 3.10 (checked on a node): a catch-all policy applies to `amq.*`
/// exchanges and server-named `amq.gen-` queues as to any other, and the default exchange
/// never hands a message to an alternate: a mandatory publish to a missing queue comes back.
/// Before, `amq.*` names were exempt from policies and the default exchange used one.
#[tokio::test]
async fn same_as_rabbitmq_a_catch_all_policy_covers_amq_names_but_the_default_exchange_keeps_its_returns()
 {
    let dir = data_dir_with_policies(serde_json::json!([
        {"vhost": "/", "name": "ae", "pattern": ".*", "apply-to": "exchanges",
         "priority": 0, "definition": {"alternate-exchange": "unrouted"}},
        {"vhost": "/", "name": "ttl", "pattern": "^amq\\.gen", "apply-to": "queues",
         "priority": 0, "definition": {"message-ttl": 0}}
    ]))
    .await;
    let broker = broker_in(&dir).await;
    let (_c, ch) = broker.channel().await;
    within(ch.confirm_select(Default::default())).await.unwrap();
    within(ch.exchange_declare(
        "unrouted".into(),
        ExchangeKind::Fanout,
        Default::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    within(ch.queue_declare("lost".into(), Default::default(), FieldTable::default()))
        .await
        .unwrap();
    within(ch.queue_bind(
        "lost".into(),
        "unrouted".into(),
        "".into(),
        Default::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    let publish = |exchange: &'static str, key: &'static str| {
        let ch = ch.clone();
        async move {
            let confirm = within(ch.basic_publish(
                exchange.into(),
                key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                key.as_bytes(),
                Default::default(),
            ))
            .await
            .unwrap();
            within(confirm).await.unwrap()
        }
    };
    let returned = publish("", "no-such-queue").await.take_message();
    assert_eq!(returned.map(|m| m.reply_code), Some(312), "NO_ROUTE");
    assert!(
        publish("amq.topic", "nothing.matches")
            .await
            .take_message()
            .is_none()
    );
    let m = wait_for_message(&ch, "lost").await;
    assert_eq!(m.delivery.data, b"nothing.matches");
    let generated = within(ch.queue_declare(
        "".into(),
        QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        },
        FieldTable::default(),
    ))
    .await
    .unwrap();
    let name: &'static str = generated.name().to_string().leak();
    assert!(publish("", name).await.take_message().is_none());
    let count = within(ch.queue_declare(
        name.into(),
        QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    ))
    .await
    .unwrap()
    .message_count();
    assert_eq!(count, 0, "the policy's TTL 0 applies to {name}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Same as RabbitMQ: a policy pattern may use lookaround (`^(?!skip-)` applies to every
/// queue but those named `skip-...`).
#[tokio::test]
async fn same_as_rabbitmq_a_policy_pattern_with_lookahead_applies_to_all_but_what_it_excludes() {
    let broker = Broker::start().await;
    let server = broker.server.as_ref().unwrap().broker().clone();
    let policy = lepus::store::definitions::PolicyDef {
        vhost: "/".into(),
        name: "cap".into(),
        pattern: "^(?!skip-)".into(),
        apply_to: "queues".into(),
        definition: serde_json::json!({"max-length": 1}),
        priority: 0,
    };
    server
        .put_policy(policy, false)
        .expect("lookaround compiles");
    let (_c, ch) = broker.channel().await;
    for queue in ["capped", "skip-me"] {
        within(ch.queue_declare(queue.into(), Default::default(), FieldTable::default()))
            .await
            .unwrap();
        for body in [b"1", b"2"] {
            within(ch.basic_publish(
                "".into(),
                queue.into(),
                Default::default(),
                body,
                BasicProperties::default(),
            ))
            .await
            .unwrap();
        }
    }
    assert_eq!(message_count(&ch, "capped").await, 1);
    assert_eq!(message_count(&ch, "skip-me").await, 2);
}
