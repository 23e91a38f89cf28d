//! Deleting a queue or exchange with more bindings than the broker removes under one hold
//! of the vhost's lock (`vhost::unbinding`, 4,096 at a time): every binding goes, the
//! auto-delete exchanges that lose their last one go too, and nothing comes back after a
//! restart.

mod common;

use common::*;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{Channel, ExchangeKind};

const BINDINGS: usize = 10_000;

fn durable_exchange() -> ExchangeDeclareOptions {
    ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

fn durable_queue() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

/// Binds `queue` to `exchange` with keys `k0`..`k{n-1}`, a thousand in flight at a time.
async fn bind_many(ch: &Channel, queue: &str, exchange: &str, n: usize) {
    bind_keys(ch, queue, exchange, n, false).await;
}

/// Binds exchange `destination` to `source` with keys `k0`..`k{n-1}`, likewise.
async fn bind_exchanges(ch: &Channel, destination: &str, source: &str, n: usize) {
    bind_keys(ch, destination, source, n, true).await;
}

async fn bind_keys(ch: &Channel, destination: &str, source: &str, n: usize, exchange: bool) {
    for start in (0..n).step_by(1000) {
        let pending: Vec<_> = (start..(start + 1000).min(n))
            .map(|i| {
                let key = format!("k{i}");
                let (d, s, k) = (destination.into(), source.into(), key.as_str().into());
                let args = FieldTable::default();
                let bind: std::pin::Pin<Box<dyn std::future::Future<Output = lapin::Result<()>>>> =
                    if exchange {
                        Box::pin(ch.exchange_bind(d, s, k, Default::default(), args))
                    } else {
                        Box::pin(ch.queue_bind(d, s, k, Default::default(), args))
                    };
                bind
            })
            .collect();
        for bind in pending {
            within(bind).await.expect("bound");
        }
    }
}

/// Publishes to `exchange` with each key of `keys`, with confirms, so that routing is done
/// before the caller looks.
async fn publish_each(ch: &Channel, exchange: &str, keys: &[&str]) {
    for key in keys {
        let confirm = within(ch.basic_publish(
            exchange.into(),
            (*key).into(),
            Default::default(),
            b"m",
            Default::default(),
        ))
        .await
        .expect("published");
        within(confirm).await.expect("confirmed");
    }
}

async fn exists(broker: &Broker, exchange: &str) -> bool {
    let (_c, ch) = broker.channel().await;
    let passive = ExchangeDeclareOptions {
        passive: true,
        ..Default::default()
    };
    within(ch.exchange_declare(
        exchange.into(),
        ExchangeKind::Direct,
        passive,
        FieldTable::default(),
    ))
    .await
    .is_ok()
}

#[tokio::test]
async fn same_as_rabbitmq_a_deleted_exchange_takes_all_its_bindings_and_its_auto_delete_feeder() {
    let dir = temp_dir("deletions-exchange");
    let _ = std::fs::remove_dir_all(&dir);
    let mut config = Config::for_tests();
    config.data_dir = dir.clone();
    let mut broker = Broker::start_with(config.clone()).await;
    let (_c, ch) = broker.channel().await;
    within(ch.confirm_select(Default::default())).await.unwrap();
    within(ch.exchange_declare(
        "many".into(),
        ExchangeKind::Direct,
        durable_exchange(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    within(ch.queue_declare("q".into(), durable_queue(), FieldTable::default()))
        .await
        .unwrap();
    bind_many(&ch, "q", "many", BINDINGS).await;
    // An auto-delete exchange whose one binding leads into `many`.
    let auto_delete = ExchangeDeclareOptions {
        auto_delete: true,
        ..Default::default()
    };
    within(ch.exchange_declare(
        "feeder".into(),
        ExchangeKind::Fanout,
        auto_delete,
        FieldTable::default(),
    ))
    .await
    .unwrap();
    within(ch.exchange_bind(
        "many".into(),
        "feeder".into(),
        "".into(),
        Default::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    publish_each(&ch, "many", &["k0", "k9999"]).await;
    assert_eq!(message_count(&ch, "q").await, 2);

    within(ch.exchange_delete("many".into(), Default::default()))
        .await
        .unwrap();
    assert!(
        !exists(&broker, "feeder").await,
        "the feeder lost its last binding"
    );
    // Declared again, it is a new exchange with no binding.
    within(ch.exchange_declare(
        "many".into(),
        ExchangeKind::Direct,
        durable_exchange(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    publish_each(&ch, "many", &["k0", "k5000", "k9999"]).await;
    assert_eq!(message_count(&ch, "q").await, 2, "nothing routed to q");
    drop(ch);
    drop(_c);
    broker.stop().await;

    let broker = Broker::start_with(config).await;
    let (_c, ch) = broker.channel().await;
    within(ch.confirm_select(Default::default())).await.unwrap();
    // (The two transient messages did not survive the restart.)
    publish_each(&ch, "many", &["k1", "k7777"]).await;
    assert_eq!(message_count(&ch, "q").await, 0, "no binding came back");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn same_as_rabbitmq_a_deleted_queue_takes_all_its_bindings_and_empties_an_auto_delete_exchange()
 {
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    within(ch.confirm_select(Default::default())).await.unwrap();
    within(ch.queue_declare("q".into(), Default::default(), FieldTable::default()))
        .await
        .unwrap();
    bind_many(&ch, "q", "amq.direct", BINDINGS).await;
    let auto_delete = ExchangeDeclareOptions {
        auto_delete: true,
        ..Default::default()
    };
    within(ch.exchange_declare(
        "only-q".into(),
        ExchangeKind::Direct,
        auto_delete,
        FieldTable::default(),
    ))
    .await
    .unwrap();
    bind_many(&ch, "q", "only-q", 1).await;

    let deleted = within(ch.queue_delete("q".into(), Default::default()))
        .await
        .unwrap();
    assert_eq!(deleted, 0);
    assert!(!exists(&broker, "only-q").await, "it lost its last binding");
    within(ch.queue_declare("q".into(), Default::default(), FieldTable::default()))
        .await
        .unwrap();
    publish_each(&ch, "amq.direct", &["k0", "k4096", "k9999"]).await;
    assert_eq!(message_count(&ch, "q").await, 0, "the new q has no binding");
}

#[tokio::test]
async fn same_as_rabbitmq_an_auto_delete_exchange_that_loses_its_last_binding_takes_every_binding_into_it()
 {
    // The auto-delete exchange `a` goes when its one binding does, with the 10,000
    // bindings that lead into it from `t` (removed in batches once the unbind's lock is
    // let go), and then the auto-delete `t` itself, which they were all of.
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    within(ch.confirm_select(Default::default())).await.unwrap();
    let auto_delete = ExchangeDeclareOptions {
        auto_delete: true,
        ..Default::default()
    };
    for (name, kind) in [("a", ExchangeKind::Fanout), ("t", ExchangeKind::Direct)] {
        within(ch.exchange_declare(name.into(), kind, auto_delete, FieldTable::default()))
            .await
            .unwrap();
    }
    within(ch.queue_declare("q".into(), Default::default(), FieldTable::default()))
        .await
        .unwrap();
    bind_many(&ch, "q", "a", 1).await;
    bind_exchanges(&ch, "a", "t", BINDINGS).await;
    publish_each(&ch, "t", &["k0", "k9999"]).await;
    assert_eq!(message_count(&ch, "q").await, 2, "t routes through a to q");

    within(ch.queue_unbind("q".into(), "a".into(), "k0".into(), FieldTable::default()))
        .await
        .unwrap();
    assert!(!exists(&broker, "a").await, "a lost its last binding");
    assert!(
        !exists(&broker, "t").await,
        "t lost every binding it had, into a"
    );
}

/// Between the batches of a deletion, the queue or exchange has left its vhost but some
/// bindings still lead to it. Routing treats it as gone, as RabbitMQ does once a deletion
/// is done: a message that only it would have taken goes to the exchange's alternate
/// exchange (or is unroutable), rather than into an object being deleted, confirmed and
/// lost. The state between batches is made here by hand (`detach`), as no test can time
/// a publish into it.
#[tokio::test]
async fn same_as_rabbitmq_a_queue_or_exchange_being_deleted_takes_no_message() {
    let broker = Broker::start().await;
    let (_c, ch) = broker.channel().await;
    let with_ae = lapin::types::FieldTable::from(std::collections::BTreeMap::from([(
        "alternate-exchange".into(),
        lapin::types::AMQPValue::LongString("ae".into()),
    )]));
    within(ch.exchange_declare(
        "ae".into(),
        ExchangeKind::Fanout,
        Default::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    within(ch.exchange_declare(
        "t".into(),
        ExchangeKind::Direct,
        Default::default(),
        with_ae,
    ))
    .await
    .unwrap();
    within(ch.exchange_declare(
        "x2".into(),
        ExchangeKind::Fanout,
        Default::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    for q in ["q", "q2", "lost"] {
        within(ch.queue_declare(q.into(), Default::default(), FieldTable::default()))
            .await
            .unwrap();
    }
    bind_many(&ch, "lost", "ae", 1).await;
    bind_many(&ch, "q", "t", 1).await;
    bind_many(&ch, "q2", "x2", 1).await;
    within(ch.exchange_bind(
        "x2".into(),
        "t".into(),
        "kx".into(),
        Default::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    let vhost = broker.server.as_ref().unwrap().broker().vhost("/").unwrap();
    let t = vhost.exchange("t").unwrap();
    let routed = |key: &[u8]| {
        let mut out = Vec::new();
        vhost.route(&t, &[key], &mut || None, &mut out).unwrap();
        let mut names: Vec<String> = out.iter().map(|q| q.name.clone()).collect();
        names.sort();
        names
    };
    assert_eq!(routed(b"k0"), ["q"]);
    assert_eq!(routed(b"kx"), ["q2"]);
    vhost.queue("q").unwrap().detach();
    assert_eq!(routed(b"k0"), ["lost"], "to the alternate exchange");
    vhost.exchange("x2").unwrap().detach();
    assert_eq!(routed(b"kx"), ["lost"], "to the alternate exchange");
    // Nor does `if-unused` count what leads only to them.
    within(ch.exchange_delete(
        "t".into(),
        ExchangeDeleteOptions {
            if_unused: true,
            ..Default::default()
        },
    ))
    .await
    .expect("an exchange whose bindings all lead to what is being deleted is unused");
}
