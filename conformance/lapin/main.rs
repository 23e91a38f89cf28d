//! Conformance scenarios written with lapin, the way Rust applications use RabbitMQ.
//!
//! Usage: conformance-lapin --url amqp://guest:guest@127.0.0.1:5672/%2F --list
//!        conformance-lapin --url ... --run NAME
//!
//! Each scenario asserts what a user would observe from RabbitMQ and prints a JSON object of
//! its observations as the last line; exit status 0 means it passed. Built as a cargo example
//! of the lepus crate so it shares its dependencies (`cargo build --example conformance-lapin`).

use std::collections::BTreeMap;
use std::time::Duration;

use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

const WAIT: Duration = Duration::from_secs(10);

fn unique(prefix: &str) -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}-{:08x}{:04x}", n, std::process::id() & 0xffff)
}

async fn connect(url: &str) -> Result<Connection> {
    Ok(tokio::time::timeout(
        WAIT,
        Connection::connect(url, ConnectionProperties::default()),
    )
    .await??)
}

fn check(cond: bool, what: impl std::fmt::Display) -> Result<()> {
    if cond {
        Ok(())
    } else {
        Err(format!("assertion failed: {what}").into())
    }
}

/// Reply code and text of an AMQP error reported by lapin.
fn amqp_error(e: &lapin::Error) -> Option<(u16, String)> {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(err) => Some((err.get_id(), err.get_message().to_string())),
        _ => None,
    }
}

fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A tiny JSON object builder: values are written already encoded.
#[derive(Default)]
struct Observed(BTreeMap<String, String>);

impl Observed {
    fn num(mut self, k: &str, v: impl std::fmt::Display) -> Self {
        self.0.insert(k.into(), v.to_string());
        self
    }
    fn strs(mut self, k: &str, v: &[String]) -> Self {
        let items: Vec<String> = v.iter().map(|s| json_string(s)).collect();
        self.0.insert(k.into(), format!("[{}]", items.join(",")));
        self
    }
    fn error(mut self, k: &str, e: &(u16, String)) -> Self {
        self.0
            .insert(k.into(), format!("[{},{}]", e.0, json_string(&e.1)));
        self
    }
    fn raw(mut self, k: &str, v: String) -> Self {
        self.0.insert(k.into(), v);
        self
    }
    fn encode(&self) -> String {
        let fields: Vec<String> = self
            .0
            .iter()
            .map(|(k, v)| format!("{}:{}", json_string(k), v))
            .collect();
        format!("{{{}}}", fields.join(","))
    }
}

async fn get_body(ch: &Channel, queue: &str) -> Result<Option<(String, bool)>> {
    Ok(ch
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await?
        .map(|m| {
            (
                String::from_utf8_lossy(&m.delivery.data).into_owned(),
                m.delivery.redelivered,
            )
        }))
}

async fn handshake(url: &str) -> Result<Observed> {
    // lapin keeps the server properties to itself; what it shows is the negotiated tuning.
    let conn = connect(url).await?;
    let config = conn.configuration();
    let (channel_max, frame_max, heartbeat) =
        (config.channel_max(), config.frame_max(), config.heartbeat());
    check(conn.status().connected(), "connected")?;
    check(
        (channel_max, frame_max, heartbeat) == (2047, 131072, 60),
        format!("tune {channel_max} {frame_max} {heartbeat}"),
    )?;
    conn.close(200, "bye".into()).await?;
    Ok(Observed::default()
        .num("channel_max", channel_max)
        .num("frame_max", frame_max)
        .num("heartbeat", heartbeat))
}

async fn work_queue(url: &str) -> Result<Observed> {
    let queue = unique("tasks");
    let producer = connect(url).await?;
    let pch = producer.create_channel().await?;
    pch.queue_declare(
        queue.as_str().into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await?;
    let n = 40;
    let mut workers = Vec::new();
    for name in ["a", "b"] {
        let conn = connect(url).await?;
        let ch = conn.create_channel().await?;
        ch.basic_qos(1, BasicQosOptions::default()).await?;
        let consumer = ch
            .basic_consume(
                queue.as_str().into(),
                name.into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        workers.push((conn, ch, consumer));
    }
    for i in 0..n {
        pch.basic_publish(
            "".into(),
            queue.as_str().into(),
            BasicPublishOptions::default(),
            format!("task {i}").as_bytes(),
            BasicProperties::default().with_delivery_mode(2),
        )
        .await?;
    }
    let mut done: Vec<(usize, String)> = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while done.len() < n && tokio::time::Instant::now() < deadline {
        for (i, (_, _, consumer)) in workers.iter_mut().enumerate() {
            if let Ok(Some(Ok(d))) =
                tokio::time::timeout(Duration::from_millis(20), consumer.next()).await
            {
                tokio::time::sleep(Duration::from_millis(2)).await;
                done.push((i, String::from_utf8_lossy(&d.data).into_owned()));
                d.ack(BasicAckOptions::default()).await?;
            }
        }
    }
    let mut processed: Vec<String> = done.iter().map(|(_, b)| b.clone()).collect();
    processed.sort_by_key(|b| b[5..].parse::<u32>().unwrap_or(0));
    check(
        processed == (0..n).map(|i| format!("task {i}")).collect::<Vec<_>>(),
        "every task once",
    )?;
    check(
        done.iter().any(|(w, _)| *w == 0) && done.iter().any(|(w, _)| *w == 1),
        "both workers busy",
    )?;
    for (conn, _, _) in workers {
        conn.close(200, "bye".into()).await?;
    }
    let left = pch
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?
        .message_count();
    pch.queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await?;
    Ok(Observed::default()
        .num("processed", processed.len())
        .raw("both_workers_busy", "true".into())
        .num("left", left))
}

async fn pubsub_fanout(url: &str) -> Result<Observed> {
    let exchange = unique("broadcast");
    let conn = connect(url).await?;
    let ch = conn.create_channel().await?;
    ch.exchange_declare(
        exchange.as_str().into(),
        ExchangeKind::Fanout,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await?;
    let mut queues = Vec::new();
    for _ in 0..3 {
        let q = ch
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        ch.queue_bind(
            q.name().clone(),
            exchange.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
        queues.push(q.name().to_string());
    }
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    for i in 0..5 {
        ch.basic_publish(
            exchange.as_str().into(),
            "ignored".into(),
            BasicPublishOptions::default(),
            format!("news {i}").as_bytes(),
            BasicProperties::default(),
        )
        .await?
        .await?;
    }
    let mut first = Vec::new();
    for (i, q) in queues.iter().enumerate() {
        let mut got = Vec::new();
        while let Some((b, _)) = get_body(&ch, q).await? {
            got.push(b);
        }
        check(
            got == (0..5).map(|i| format!("news {i}")).collect::<Vec<_>>(),
            format!("subscriber {i} got {got:?}"),
        )?;
        first = got;
    }
    ch.exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
        .await?;
    conn.close(200, "bye".into()).await?;
    Ok(Observed::default()
        .strs("each_got", &first)
        .num("subscribers", 3))
}

async fn requeue_order(url: &str) -> Result<Observed> {
    let queue = unique("requeue");
    let conn = connect(url).await?;
    let ch = conn.create_channel().await?;
    ch.queue_declare(
        queue.as_str().into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    for i in 0..6 {
        ch.basic_publish(
            "".into(),
            queue.as_str().into(),
            BasicPublishOptions::default(),
            format!("m{i}").as_bytes(),
            BasicProperties::default(),
        )
        .await?
        .await?;
    }
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(
            ch.basic_get(queue.as_str().into(), BasicGetOptions::default())
                .await?
                .ok_or("empty")?,
        );
    }
    got[2]
        .delivery
        .reject(BasicRejectOptions { requeue: true })
        .await?;
    got[0]
        .delivery
        .nack(BasicNackOptions {
            multiple: false,
            requeue: true,
        })
        .await?;
    got[3].delivery.ack(BasicAckOptions::default()).await?;
    got[1]
        .delivery
        .reject(BasicRejectOptions { requeue: false })
        .await?;
    let mut order = Vec::new();
    while let Some((b, r)) = get_body(&ch, &queue).await? {
        order.push(format!("[{},{}]", json_string(&b), r));
    }
    let expected = [
        "[\"m0\",true]",
        "[\"m2\",true]",
        "[\"m4\",false]",
        "[\"m5\",false]",
    ];
    check(order == expected, format!("order {order:?}"))?;
    ch.queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await?;
    conn.close(200, "bye".into()).await?;
    Ok(Observed::default().raw("order", format!("[{}]", order.join(","))))
}

async fn confirms(url: &str) -> Result<Observed> {
    let queue = unique("confirm");
    let conn = connect(url).await?;
    let ch = conn.create_channel().await?;
    ch.queue_declare(
        queue.as_str().into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let mut pending = Vec::new();
    for i in 0..100 {
        pending.push(
            ch.basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                format!("c{i}").as_bytes(),
                BasicProperties::default(),
            )
            .await?,
        );
    }
    for p in pending {
        check(p.await?.is_ack(), "acked")?;
    }
    let returned = ch
        .basic_publish(
            "".into(),
            unique("nowhere").as_str().into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            b"x",
            BasicProperties::default(),
        )
        .await?
        .await?;
    check(returned.is_ack(), "an unroutable publish is still acked")?;
    let returned = returned.take_message().is_some() as u32;
    let count = ch
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?
        .message_count();
    check(count == 100, format!("count {count}"))?;
    ch.queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await?;
    conn.close(200, "bye".into()).await?;
    Ok(Observed::default()
        .num("confirmed", 100)
        .num("returned", returned))
}

async fn large_messages(url: &str) -> Result<Observed> {
    let queue = unique("large");
    let conn = connect(url).await?;
    let ch = conn.create_channel().await?;
    ch.queue_declare(
        queue.as_str().into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let big: Vec<u8> = (0..5 * 1024 * 1024).map(|i| (i % 256) as u8).collect();
    ch.basic_publish(
        "".into(),
        queue.as_str().into(),
        BasicPublishOptions::default(),
        &big,
        BasicProperties::default(),
    )
    .await?
    .await?;
    ch.basic_publish(
        "".into(),
        queue.as_str().into(),
        BasicPublishOptions::default(),
        b"",
        BasicProperties::default(),
    )
    .await?
    .await?;
    let a = ch
        .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
        .await?
        .ok_or("empty")?;
    let b = ch
        .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
        .await?
        .ok_or("empty")?;
    check(
        a.delivery.data == big && b.delivery.data.is_empty(),
        "bodies intact",
    )?;
    ch.queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await?;
    conn.close(200, "bye".into()).await?;
    Ok(Observed::default().raw(
        "sizes",
        format!("[{},{}]", a.delivery.data.len(), b.delivery.data.len()),
    ))
}

async fn many_channels(url: &str) -> Result<Observed> {
    let conn = connect(url).await?;
    let mut channels = Vec::new();
    for i in 0..200 {
        let ch = conn.create_channel().await?;
        let q = ch
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        ch.basic_publish(
            "".into(),
            q.name().clone(),
            BasicPublishOptions::default(),
            format!("hello {i}").as_bytes(),
            BasicProperties::default(),
        )
        .await?
        .await?;
        channels.push((ch, q.name().to_string()));
    }
    let broken = channels[10]
        .0
        .queue_declare(
            unique("missing").as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .err()
        .and_then(|e| amqp_error(&e))
        .ok_or("a missing queue was found")?;
    check(broken.0 == 404, "404")?;
    let mut ok = 0;
    for (i, (ch, q)) in channels.iter().enumerate() {
        if i == 10 {
            continue;
        }
        let (body, _) = get_body(ch, q).await?.ok_or("empty")?;
        check(body == format!("hello {i}"), "own message")?;
        ok += 1;
    }
    conn.close(200, "bye".into()).await?;
    Ok(Observed::default()
        .num("channels", 200)
        .num("still_working", ok)
        .num("broken_code", broken.0))
}

async fn errors(url: &str) -> Result<Observed> {
    let mut observed = Observed::default();
    let conn = connect(url).await?;
    let missing = unique("missing");
    let ch = conn.create_channel().await?;
    let e = ch
        .queue_declare(
            missing.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .err()
        .and_then(|e| amqp_error(&e))
        .ok_or("no error")?;
    check(
        e == (
            404,
            format!("NOT_FOUND - no queue '{missing}' in vhost '/'"),
        ),
        format!("{e:?}"),
    )?;
    observed = observed.error("passive_missing", &(e.0, e.1.replace(&missing, "Q")));
    let q = unique("ttl");
    let ch = conn.create_channel().await?;
    let mut ttl = FieldTable::default();
    ttl.insert("x-message-ttl".into(), AMQPValue::LongInt(1000));
    ch.queue_declare(q.as_str().into(), QueueDeclareOptions::default(), ttl)
        .await?;
    let mut ttl2 = FieldTable::default();
    ttl2.insert("x-message-ttl".into(), AMQPValue::LongInt(2000));
    let e = ch
        .queue_declare(q.as_str().into(), QueueDeclareOptions::default(), ttl2)
        .await
        .err()
        .and_then(|e| amqp_error(&e))
        .ok_or("no error")?;
    let expected = format!(
        "PRECONDITION_FAILED - inequivalent arg 'x-message-ttl' for queue '{q}' in vhost '/': received '2000' but current is '1000'"
    );
    check(e == (406, expected), format!("{e:?}"))?;
    observed = observed.error("inequivalent", &(e.0, e.1.replace(&q, "Q")));
    let ch = conn.create_channel().await?;
    let e = ch
        .exchange_declare(
            "amq.mine".into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .err()
        .and_then(|e| amqp_error(&e))
        .ok_or("no error")?;
    check(e.0 == 403, format!("{e:?}"))?;
    observed = observed.error("reserved", &e);
    let ch = conn.create_channel().await?;
    ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default())
        .await?;
    conn.close(200, "bye".into()).await?;
    Ok(observed)
}

fn scenarios() -> Vec<&'static str> {
    vec![
        "handshake",
        "work_queue",
        "pubsub_fanout",
        "requeue_order",
        "confirms",
        "large_messages",
        "many_channels",
        "errors",
    ]
}

async fn run(name: &str, url: &str) -> Result<Observed> {
    match name {
        "handshake" => handshake(url).await,
        "work_queue" => work_queue(url).await,
        "pubsub_fanout" => pubsub_fanout(url).await,
        "requeue_order" => requeue_order(url).await,
        "confirms" => confirms(url).await,
        "large_messages" => large_messages(url).await,
        "many_channels" => many_channels(url).await,
        "errors" => errors(url).await,
        other => Err(format!("unknown scenario {other}").into()),
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    if args.iter().any(|a| a == "--list") {
        println!("{}", scenarios().join("\n"));
        return;
    }
    let (Some(url), Some(name)) = (arg("--url"), arg("--run")) else {
        eprintln!("usage: conformance-lapin --url URL (--list | --run NAME)");
        std::process::exit(2);
    };
    match tokio::time::timeout(Duration::from_secs(60), run(&name, &url)).await {
        Ok(Ok(observed)) => println!("{}", observed.encode()),
        Ok(Err(e)) => {
            eprintln!("{name} failed: {e}");
            std::process::exit(1);
        }
        Err(_) => {
            eprintln!("{name} timed out");
            std::process::exit(1);
        }
    }
}
