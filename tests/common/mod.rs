//! Shared test fixtures: an in-process broker on an ephemeral port, lapin connections to it,
//! and a raw AMQP client for the cases no well-behaved client library will produce.

#![allow(dead_code)]

pub mod http;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use amq_protocol::frame::{AMQPFrame, WriteContext, gen_frame, parse_frame};
use amq_protocol::protocol::{AMQPClass, connection};
use amq_protocol::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Connection, ConnectionProperties};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub use lepus::{Config, Server};

/// Every wait in a test is bounded: a broker bug must fail a test, not hang the suite.
pub const WAIT: Duration = Duration::from_secs(10);

/// Awaits `fut`, failing the test if it takes longer than [`WAIT`].
pub async fn within<T>(fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, fut)
        .await
        .expect("timed out waiting for the broker")
}

/// A broker on 127.0.0.1 with an ephemeral port.
pub struct Broker {
    pub server: Option<Server>,
    pub addr: SocketAddr,
}

impl Broker {
    pub async fn start() -> Broker {
        Self::start_with(Config::for_tests()).await
    }

    pub async fn start_with(config: Config) -> Broker {
        let server = Server::start(config).await.expect("broker starts");
        let addr = server.local_addr();
        Broker {
            server: Some(server),
            addr,
        }
    }

    pub fn uri(&self) -> String {
        format!("amqp://guest:guest@{}/%2f", self.addr)
    }

    /// A lapin connection that advertises the usual client capabilities.
    pub async fn connect(&self) -> Connection {
        within(Connection::connect(
            &self.uri(),
            ConnectionProperties::default(),
        ))
        .await
        .expect("lapin connects")
    }

    pub async fn channel(&self) -> (Connection, lapin::Channel) {
        let conn = self.connect().await;
        let ch = within(conn.create_channel()).await.expect("channel opens");
        (conn, ch)
    }

    pub async fn raw(&self) -> RawClient {
        RawClient::connect(self.addr).await
    }

    /// The budget of what queues, exchanges and bindings keep (`broker_topology_bytes`).
    pub fn topology(&self) -> std::sync::Arc<lepus::broker::budget::Budget> {
        let server = self.server.as_ref().expect("a running broker");
        server.broker().creation_limits.topology.clone()
    }

    pub async fn stop(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown().await;
        }
    }
}

/// A directory of its own under the system's temporary one, for a test's data: named after
/// `name`, the process and a random suffix, since tests run at once.
pub fn temp_dir(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!(
        "lepus-{name}-{}-{}",
        std::process::id(),
        lepus::auth::random::random_suffix()
    ))
}

/// How many messages `queue` holds ready, asked with a passive declare.
pub async fn message_count(ch: &lapin::Channel, queue: &str) -> u32 {
    within(ch.queue_declare(
        queue.into(),
        lapin::options::QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    ))
    .await
    .expect("the queue exists")
    .message_count()
}

/// Gets a message from `queue`, polling until one is there: for messages that arrive after
/// the call that caused them returned, such as dead letters (routed in the background).
pub async fn get_eventually(ch: &lapin::Channel, queue: &str) -> lapin::message::BasicGetMessage {
    within(async {
        loop {
            let got = ch
                .basic_get(
                    queue.into(),
                    lapin::options::BasicGetOptions { no_ack: true },
                )
                .await
                .expect("basic.get");
            if let Some(m) = got {
                return m;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
}

/// The bodies of every message of `queue`, taken with no-ack, in order.
pub async fn bodies(ch: &lapin::Channel, queue: &str) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(m) = within(ch.basic_get(
        queue.into(),
        lapin::options::BasicGetOptions { no_ack: true },
    ))
    .await
    .expect("basic.get")
    {
        out.push(String::from_utf8_lossy(&m.delivery.data).into_owned());
    }
    out
}

/// Declares a fanout exchange and a queue bound to it: where the tests' dead letters land.
pub async fn dead_letter_target(ch: &lapin::Channel, exchange: &str, queue: &str) {
    use lapin::ExchangeKind;
    within(ch.exchange_declare(
        exchange.into(),
        ExchangeKind::Fanout,
        Default::default(),
        FieldTable::default(),
    ))
    .await
    .expect("exchange declared");
    within(ch.queue_declare(queue.into(), Default::default(), FieldTable::default()))
        .await
        .expect("queue declared");
    within(ch.queue_bind(
        queue.into(),
        exchange.into(),
        "".into(),
        Default::default(),
        FieldTable::default(),
    ))
    .await
    .expect("queue bound");
}

/// The reply code and text of the error lapin reports, if it is an AMQP error.
pub fn amqp_error(e: &lapin::Error) -> Option<(u16, String)> {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(err) => Some((err.get_id(), err.get_message().to_string())),
        _ => None,
    }
}

/// Asserts that `result` failed with this reply code and text.
#[track_caller]
pub fn assert_amqp_error<T: std::fmt::Debug>(result: lapin::Result<T>, code: u16, text: &str) {
    let err = result.expect_err("the broker should refuse this");
    assert_eq!(
        amqp_error(&err),
        Some((code, text.to_owned())),
        "got {err:?}"
    );
}

/// Publishes on a channel in confirm mode and asserts that the broker closes the channel with
/// this code and text. (Waiting on the confirm is the race-free way to see a channel error
/// caused by a publish: the close fails the pending confirm.)
pub async fn assert_publish_refused(
    ch: &lapin::Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    properties: lapin::BasicProperties,
    code: u16,
    text: &str,
) {
    let confirm = within(ch.basic_publish(
        exchange.into(),
        routing_key.into(),
        Default::default(),
        body,
        properties,
    ))
    .await
    .expect("the publish is written");
    assert_amqp_error(within(confirm).await, code, text);
}

pub fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in entries {
        t.insert(ShortString::from(*k), v.clone());
    }
    t
}

pub fn long_str(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

/// A bare-bones AMQP client over a raw socket, for sending what real clients never send.
pub struct RawClient {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl RawClient {
    pub async fn connect(addr: SocketAddr) -> RawClient {
        let stream = within(TcpStream::connect(addr))
            .await
            .expect("tcp connects");
        RawClient {
            stream,
            buf: Vec::new(),
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    pub async fn send_frame(&mut self, frame: AMQPFrame) {
        let bytes = encode(&frame);
        self.send(&bytes).await;
    }

    pub async fn send_method(&mut self, channel: u16, method: AMQPClass) {
        self.send_frame(AMQPFrame::Method(channel, method)).await;
    }

    /// Reads the next frame; None when the broker closed the socket.
    pub async fn recv(&mut self) -> Option<AMQPFrame> {
        loop {
            match parse_frame(&self.buf[..]) {
                Ok((rest, frame)) => {
                    let used = self.buf.len() - rest.len();
                    self.buf.drain(..used);
                    return Some(frame);
                }
                Err(e) if e.is_incomplete() => {}
                Err(e) => panic!("unparseable frame from broker: {e:?} in {:?}", self.buf),
            }
            let mut chunk = [0u8; 65536];
            let n = within(self.stream.read(&mut chunk))
                .await
                .unwrap_or_default();
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Reads frames until a method frame, skipping heartbeats.
    pub async fn recv_method(&mut self) -> Option<(u16, AMQPClass)> {
        loop {
            match self.recv().await? {
                AMQPFrame::Method(ch, m) => return Some((ch, m)),
                AMQPFrame::Heartbeat => continue,
                other => panic!("expected a method frame, got {other:?}"),
            }
        }
    }

    /// Reads raw bytes until the socket closes (or `max` bytes arrived).
    pub async fn read_raw(&mut self, max: usize) -> Vec<u8> {
        let mut out = std::mem::take(&mut self.buf);
        let mut chunk = [0u8; 4096];
        while out.len() < max {
            match within(self.stream.read(&mut chunk)).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&chunk[..n]),
            }
        }
        out
    }

    /// Whether the broker closes the socket (reads until EOF or reset).
    pub async fn closed(&mut self) -> bool {
        let mut chunk = [0u8; 4096];
        loop {
            match within(self.stream.read(&mut chunk)).await {
                Ok(0) | Err(_) => return true,
                Ok(_) => continue,
            }
        }
    }

    /// Protocol header, Start/StartOk (PLAIN guest), Tune/TuneOk, Open/OpenOk.
    pub async fn handshake(&mut self) {
        self.handshake_with(FieldTable::default(), 0).await;
    }

    pub async fn handshake_with(&mut self, client_properties: FieldTable, heartbeat: u16) {
        self.handshake_tuned(client_properties, 0, heartbeat).await;
    }

    /// The handshake with a chosen channel_max (0 keeps the broker's offer) and heartbeat.
    pub async fn handshake_tuned(
        &mut self,
        client_properties: FieldTable,
        channel_max: u16,
        heartbeat: u16,
    ) {
        self.send(b"AMQP\x00\x00\x09\x01").await;
        let (_, start) = self.recv_method().await.expect("start");
        assert!(matches!(
            start,
            AMQPClass::Connection(connection::AMQPMethod::Start(_))
        ));
        self.send_method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
                client_properties,
                mechanism: "PLAIN".into(),
                response: LongString::from(b"\0guest\0guest".to_vec()),
                locale: "en_US".into(),
            })),
        )
        .await;
        let (_, tune) = self.recv_method().await.expect("tune");
        let AMQPClass::Connection(connection::AMQPMethod::Tune(tune)) = tune else {
            panic!("expected tune, got {tune:?}");
        };
        self.send_method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
                channel_max: if channel_max == 0 {
                    tune.channel_max
                } else {
                    channel_max
                },
                frame_max: tune.frame_max,
                heartbeat,
            })),
        )
        .await;
        self.send_method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
                virtual_host: "/".into(),
            })),
        )
        .await;
        let (_, ok) = self.recv_method().await.expect("open-ok");
        assert!(matches!(
            ok,
            AMQPClass::Connection(connection::AMQPMethod::OpenOk(_))
        ));
    }

    /// basic.publish to `routing_key` through the default exchange on `channel`, and the
    /// content header announcing `body_size` bytes: the body frames are the caller's.
    pub async fn start_publish(&mut self, channel: u16, routing_key: &str, body_size: u64) {
        use amq_protocol::frame::AMQPContentHeader;
        use amq_protocol::protocol::basic;
        self.send_method(
            channel,
            AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
                exchange: "".into(),
                routing_key: routing_key.into(),
                ..Default::default()
            })),
        )
        .await;
        self.send_frame(AMQPFrame::Header(
            channel,
            AMQPContentHeader {
                class_id: 60,
                body_size,
                properties: Default::default(),
            },
        ))
        .await;
    }

    /// tx.select on `channel`, waiting for its select-ok.
    pub async fn tx_select(&mut self, channel: u16) {
        use amq_protocol::protocol::tx;
        self.send_method(
            channel,
            AMQPClass::Tx(tx::AMQPMethod::Select(tx::Select {})),
        )
        .await;
        let (_, ok) = self.recv_method().await.expect("tx.select-ok");
        assert!(matches!(ok, AMQPClass::Tx(tx::AMQPMethod::SelectOk(_))));
    }

    pub async fn open_channel(&mut self, id: u16) {
        use amq_protocol::protocol::channel;
        self.send_method(
            id,
            AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
        )
        .await;
        let (ch, ok) = self.recv_method().await.expect("channel.open-ok");
        assert_eq!(ch, id);
        assert!(matches!(
            ok,
            AMQPClass::Channel(channel::AMQPMethod::OpenOk(_))
        ));
    }

    /// Waits for Connection.Close and returns (code, text, class, method).
    pub async fn expect_connection_close(&mut self) -> (u16, String, u16, u16) {
        loop {
            match self.recv_method().await {
                Some((0, AMQPClass::Connection(connection::AMQPMethod::Close(c)))) => {
                    return (
                        c.reply_code,
                        c.reply_text.to_string(),
                        c.class_id,
                        c.method_id,
                    );
                }
                Some(_) => continue,
                None => panic!("socket closed without Connection.Close"),
            }
        }
    }

    /// Waits for Channel.Close on `channel` and returns (code, text, class, method).
    pub async fn expect_channel_close(&mut self, channel: u16) -> (u16, String, u16, u16) {
        use amq_protocol::protocol::channel as ch;
        loop {
            // Deliveries may come first: skip their content.
            let method = match self.recv().await {
                Some(AMQPFrame::Method(id, m)) => Some((id, m)),
                Some(_) => continue,
                None => None,
            };
            match method {
                Some((id, AMQPClass::Channel(ch::AMQPMethod::Close(c)))) if id == channel => {
                    return (
                        c.reply_code,
                        c.reply_text.to_string(),
                        c.class_id,
                        c.method_id,
                    );
                }
                Some((0, AMQPClass::Connection(connection::AMQPMethod::Close(c)))) => panic!(
                    "connection closed instead: {} {}",
                    c.reply_code, c.reply_text
                ),
                Some(_) => continue,
                None => panic!("socket closed without Channel.Close"),
            }
        }
    }
}

/// Encodes a frame with amq-protocol.
pub fn encode(frame: &AMQPFrame) -> Vec<u8> {
    gen_frame(frame)(WriteContext::from(Vec::new()))
        .expect("encodes")
        .write
}

/// A raw frame with any type, channel and payload.
pub fn raw_frame(kind: u8, channel: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![kind];
    f.extend_from_slice(&channel.to_be_bytes());
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    f.extend_from_slice(payload);
    f.push(0xCE);
    f
}

/// A publish, its content header and a one-byte body on channel 1 to the default exchange.
pub fn publish_frames(queue: &str) -> Vec<u8> {
    let mut method = vec![0, 60, 0, 40, 0, 0, 0];
    method.push(queue.len() as u8);
    method.extend_from_slice(queue.as_bytes());
    method.push(0);
    let mut header = vec![0, 60, 0, 0];
    header.extend_from_slice(&1u64.to_be_bytes());
    header.extend_from_slice(&[0, 0]);
    let mut frames = raw_frame(1, 1, &method);
    frames.extend(raw_frame(2, 1, &header));
    frames.extend(raw_frame(3, 1, b"x"));
    frames
}

/// A broker on a runtime of its own, for a test of a bug that made a connection's task spin
/// without yielding: on the test's own runtime that would hang the test (and its runtime's
/// shutdown, which waits for the spinning task) instead of failing it. This runtime is
/// dropped without waiting for its workers.
pub struct IsolatedBroker {
    pub broker: Broker,
    runtime: Option<tokio::runtime::Runtime>,
}

impl IsolatedBroker {
    pub fn start() -> IsolatedBroker {
        std::thread::spawn(|| {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("a runtime");
            let broker = runtime.block_on(Broker::start());
            IsolatedBroker {
                broker,
                runtime: Some(runtime),
            }
        })
        .join()
        .expect("the broker starts")
    }
}

impl Drop for IsolatedBroker {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// A `lepus` process (the real binary) on an ephemeral port, for what an in-process broker
/// cannot show: a SIGKILL, or the broker's own resident memory.
pub struct Process {
    pub child: std::process::Child,
    pub addr: SocketAddr,
}

impl Process {
    /// Starts `lepus` with `args` and its data in `dir`; waits until it listens.
    pub fn start(args: &[&str], dir: &std::path::Path) -> Process {
        use std::io::{BufRead, BufReader};
        use std::process::{Command, Stdio};
        let mut child = Command::new(env!("CARGO_BIN_EXE_lepus"))
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .arg("--data-dir")
            .arg(dir)
            .env("LEPUS_LOG", "info")
            .env("NO_COLOR", "1")
            // Tests run in parallel: no broker takes the fixed HTTP ports.
            .env("LEPUS_MANAGEMENT_LISTEN", "off")
            .env("LEPUS_PROMETHEUS_LISTEN", "off")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the lepus binary starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // Keep reading to the end, so the broker never blocks on a full pipe.
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some((_, addr)) = line.split_once("listening for AMQP on ") {
                    let _ = tx.send(addr.trim().to_owned());
                }
            }
        });
        let addr = rx
            .recv_timeout(WAIT)
            .expect("the broker reports its address")
            .parse()
            .expect("a socket address");
        Process { child, addr }
    }

    pub fn uri(&self) -> String {
        format!("amqp://guest:guest@{}/%2f", self.addr)
    }

    pub async fn connect(&self) -> Connection {
        within(Connection::connect(
            &self.uri(),
            ConnectionProperties::default(),
        ))
        .await
        .expect("lapin connects")
    }

    /// The broker's resident memory in bytes, from /proc.
    pub fn rss_bytes(&self) -> u64 {
        let statm = std::fs::read_to_string(format!("/proc/{}/statm", self.child.id()))
            .expect("the broker's /proc/PID/statm");
        let pages: u64 = statm
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse().ok())
            .expect("resident pages");
        pages * 4096
    }

    /// SIGKILL: no shutdown code runs, buffered writes that were not synced are lost.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A small deterministic generator (xorshift), so that a failing seed replays.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// True `percent` times in a hundred.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}
