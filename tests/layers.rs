//! The seams between layers, exercised without a socket: a queue delivers to any
//! `DeliverySink`, is settled through its `DeliverySource`, and hands dead letters to its host
//! instead of routing them itself.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

use amq_protocol::types::{AMQPValue, FieldTable};
use bytes::Bytes;
use lepus::broker::memory::Memory;
use lepus::broker::message::Message;
use lepus::broker::queue::consumer::Consumer;
use lepus::broker::queue::context::{QueueHost, QueueServices};
use lepus::broker::queue::dead_letter::{DeadLetter, DlxTarget};
use lepus::broker::queue::delivery::{
    ConsumerId, Delivery, DeliverySink, DeliverySource, Settled, Unblock,
};
use lepus::broker::queue::prefetch::ChannelPrefetch;
use lepus::broker::queue::{Queue, QueueConfig};
use lepus::broker::timer::Timers;
use lepus::protocol::properties;
use lepus::store::Store;

/// A sink that keeps what it is given, and can be told to be full.
#[derive(Default)]
struct TestSink {
    got: Mutex<Vec<Delivery>>,
    full: AtomicBool,
}

impl DeliverySink for TestSink {
    fn sink_id(&self) -> u64 {
        42
    }
    fn has_room(&self, _size: usize, _batched: usize) -> bool {
        !self.full.load(Ordering::SeqCst)
    }
    fn push_deliveries(&self, d: &mut Vec<Delivery>, _bytes: usize) -> Result<(), Vec<Delivery>> {
        self.got.lock().unwrap().append(d);
        Ok(())
    }
    fn consumer_cancelled(&self, _channel: u16, _consumer: ConsumerId, _tag: Bytes) {}
}

/// A host that records dead letters instead of routing them.
#[derive(Default)]
struct TestHost {
    letters: Mutex<Vec<(String, String, usize)>>,
}

impl QueueHost for TestHost {
    fn dead_letter(&self, queue: &str, target: DlxTarget, letters: Vec<DeadLetter>) {
        self.letters
            .lock()
            .unwrap()
            .push((queue.to_owned(), target.exchange, letters.len()));
    }
    fn queue_expired(&self, _name: &str, _identity: usize) {}
}

fn queue(host: &Arc<TestHost>, arguments: FieldTable) -> (Arc<Queue>, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!(
        "lepus-layers-{}",
        lepus::auth::random::random_suffix()
    ));
    let store = Arc::new(Store::open(&dir, 1 << 20).unwrap());
    let host: Weak<dyn QueueHost> = Arc::downgrade(host) as Weak<dyn QueueHost>;
    let q = Queue::new(
        QueueConfig {
            name: "q".into(),
            vhost: "/".into(),
            durable: false,
            auto_delete: false,
            exclusive_owner: None,
            arguments,
            id: 0,
            share: None,
        },
        QueueServices {
            store,
            memory: Memory::leaked(64 << 20),
            timers: Timers::start().unwrap(),
            host,
            dead_letter_retry_ms: 180_000,
        },
        None,
        None,
    );
    (q, dir)
}

fn message(body: &'static [u8]) -> Arc<Message> {
    let props = Bytes::from_static(&[0, 0]);
    let summary = properties::scan(&props).unwrap();
    Arc::new(Message::new(
        Bytes::new(),
        Bytes::from_static(b"q"),
        props,
        Bytes::from_static(body),
        &summary,
    ))
}

fn consumer(sink: &Arc<TestSink>, prefetch: &Arc<ChannelPrefetch>, no_ack: bool) -> Consumer {
    Consumer {
        id: 7,
        tag: Bytes::from_static(b"ctag"),
        channel: 1,
        sink: sink.clone(),
        channel_prefetch: prefetch.clone(),
        no_ack,
        exclusive: false,
        prefetch_count: 0,
        in_flight: 0,
        priority: 0,
        arguments: Bytes::new(),
        blocked: None,
        dead: false,
    }
}

#[test]
fn a_queue_delivers_in_order_to_any_sink_and_is_settled_through_its_source() {
    let host = Arc::new(TestHost::default());
    let (q, dir) = queue(&host, FieldTable::default());
    for body in [&b"one"[..], b"two", b"three"] {
        q.publish(message(body));
    }
    let sink = Arc::new(TestSink::default());
    let prefetch = Arc::new(ChannelPrefetch::new(1000));
    q.add_consumer(consumer(&sink, &prefetch, false)).unwrap();
    let got = std::mem::take(&mut *sink.got.lock().unwrap());
    let bodies: Vec<Vec<u8>> = got
        .iter()
        .map(|d| d.entry.message.body.contiguous().into_owned())
        .collect();
    assert_eq!(
        bodies,
        vec![b"one".to_vec(), b"two".to_vec(), b"three".to_vec()]
    );
    assert_eq!(q.counts(), (0, 1), "nothing ready, one consumer");
    let source = got[0].source.clone();
    source.ack(
        got.iter()
            .map(|d| Settled::of(&d.entry, Some(d.consumer_id)))
            .collect(),
        Unblock::Nobody,
    );
    assert_eq!(q.message_count(), 0);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_full_sink_holds_the_queue_back_until_it_says_it_has_room() {
    let host = Arc::new(TestHost::default());
    let (q, dir) = queue(&host, FieldTable::default());
    let sink = Arc::new(TestSink::default());
    sink.full.store(true, Ordering::SeqCst);
    let prefetch = Arc::new(ChannelPrefetch::new(1000));
    q.add_consumer(consumer(&sink, &prefetch, true)).unwrap();
    q.publish(message(b"waits"));
    assert!(sink.got.lock().unwrap().is_empty());
    assert_eq!(q.message_count(), 1);
    sink.full.store(false, Ordering::SeqCst);
    q.kick(Unblock::Sink(sink.sink_id()));
    assert_eq!(sink.got.lock().unwrap().len(), 1);
    assert_eq!(q.message_count(), 0);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_queue_hands_dead_letters_to_its_host_and_routes_nothing_itself() {
    let host = Arc::new(TestHost::default());
    let mut args = FieldTable::default();
    args.insert("x-message-ttl".into(), AMQPValue::LongInt(0));
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString("dlx".into()),
    );
    let (q, dir) = queue(&host, args);
    q.publish(message(b"expires at once"));
    assert_eq!(q.message_count(), 0);
    assert_eq!(
        *host.letters.lock().unwrap(),
        vec![("q".to_owned(), "dlx".to_owned(), 1)]
    );
    let _ = std::fs::remove_dir_all(dir);
}
