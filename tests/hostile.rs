//! Hostile and careless clients: whatever one connection does, the broker stays up, and a
//! witness connection beside it stays healthy.

mod common;

use std::time::Duration;

use amq_protocol::protocol::{AMQPClass, basic};
use amq_protocol::types::FieldTable;
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
async fn eventually(mut cond: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
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
