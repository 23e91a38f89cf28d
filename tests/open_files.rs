//! The store's open files stay within a bound however many durable queues clients declare:
//! segment files nobody uses are closed once synced, and reopened on use (`store::file_cache`).
//! This file holds one test, so that the process's descriptors are this broker's alone.

mod common;

use common::*;
use futures_lite::StreamExt;
use lapin::BasicProperties;
use lapin::options::*;
use lapin::types::FieldTable;

const QUEUES: usize = 400;

fn descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

fn config(dir: &std::path::Path) -> Config {
    let mut config = Config::for_tests();
    config.data_dir = dir.to_owned();
    config.limits.max_open_store_files = Some(16);
    // Small segments: each queue's messages span several files.
    config.limits.segment_bytes = 16 * 1024;
    config
}

#[tokio::test]
async fn durable_queues_by_the_hundred_hold_no_descriptor_each_and_keep_their_messages() {
    let dir = temp_dir("open-files");
    let _ = std::fs::remove_dir_all(&dir);
    let before = descriptors();
    let mut broker = Broker::start_with(config(&dir)).await;
    let (_c, ch) = broker.channel().await;
    within(ch.confirm_select(ConfirmSelectOptions::default()))
        .await
        .unwrap();
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let body = vec![7u8; 6 * 1024];
    for q in 0..QUEUES {
        let name = format!("q{q}");
        within(ch.queue_declare(name.as_str().into(), durable, FieldTable::default()))
            .await
            .unwrap();
        let mut confirms = Vec::new();
        for m in 0..4u8 {
            let mut message = body.clone();
            message[0] = m;
            let publish = ch.basic_publish(
                "".into(),
                name.as_str().into(),
                BasicPublishOptions::default(),
                &message,
                BasicProperties::default().with_delivery_mode(2),
            );
            confirms.push(within(publish).await.unwrap());
        }
        for confirm in confirms {
            assert!(within(confirm).await.unwrap().is_ack(), "confirmed");
        }
    }
    let during = descriptors();
    assert!(
        during < before + 100,
        "{QUEUES} durable queues took {} descriptors",
        during - before
    );
    // Every queue reads its messages back (from files the cache closed), and acks the first.
    for q in 0..QUEUES {
        let name = format!("q{q}");
        let mut consumer = within(ch.basic_consume(
            name.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ))
        .await
        .unwrap();
        for m in 0..4u8 {
            let delivery = within(consumer.next()).await.unwrap().unwrap();
            assert_eq!(delivery.data[0], m, "{name}: in order");
            if m == 0 {
                within(delivery.ack(BasicAckOptions::default()))
                    .await
                    .unwrap();
            }
        }
        within(ch.basic_cancel(consumer.tag(), BasicCancelOptions::default()))
            .await
            .unwrap();
    }
    drop(ch);
    drop(_c);
    broker.stop().await;

    // Same as RabbitMQ: after a restart each queue holds what was not acknowledged.
    let broker = Broker::start_with(config(&dir)).await;
    let (_c, ch) = broker.channel().await;
    for q in 0..QUEUES {
        let name = format!("q{q}");
        for m in 1..4u8 {
            let got = get_eventually(&ch, &name).await;
            assert_eq!(got.delivery.data[0], m, "{name}: after the restart");
            assert_eq!(got.delivery.data.len(), body.len());
        }
    }
    // The acks' files are closed as their syncs (lazy: up to 200 ms) make them clean.
    within(async {
        while descriptors() >= before + 100 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    let _ = std::fs::remove_dir_all(&dir);
}
