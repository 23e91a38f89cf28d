//! `lepus-perf`: a load generator for AMQP 0-9-1 brokers, in the spirit of RabbitMQ's PerfTest
//! and LavinMQ's lavinmqperf. It runs one scenario against one broker and prints one JSON
//! line with the rate it measured and its own CPU use. Publishers are closed-loop: they
//! pause when more than `--max-outstanding` messages per queue are unconsumed, so the rate
//! is what the broker sustains with bounded queues.
//!
//! ```text
//! lepus-perf --addr 127.0.0.1:5672 --scenario autoack --seconds 10
//! ```

mod backlog;
mod busy;
mod client;
mod relay;

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use tokio::io::AsyncWriteExt;
use tokio::sync::Notify;

use client::{Client, ack_frame, deliver_tag, publish_frames};

#[derive(Parser, Debug, Clone)]
#[command(about = "Measures an AMQP 0-9-1 broker")]
struct Args {
    /// Broker address.
    #[arg(long, default_value = "127.0.0.1:5672")]
    addr: String,
    /// Speak TLS, trusting this CA (PEM) for the broker's `localhost` certificate.
    #[arg(long)]
    tls_ca: Option<String>,
    #[arg(long, default_value = "guest")]
    user: String,
    #[arg(long, default_value = "guest")]
    password: String,
    /// autoack, ack, ack-multi, confirm, confirm-16 (16 publishers), fanout, topic, many-queues (1,000 queues and
    /// consumers, 10 publishers), large-64k, large-1m (autoack with such bodies), latency,
    /// conns or backlog; `echo`
    /// measures the `latency` pattern against `echo-server`, a bare TCP echo server, which
    /// gives the floor that this machine's network stack and scheduler put under any broker;
    /// `relay` moves `--size` chunks through `relay-server`, a bare TCP relay, which gives
    /// a reference for the `large-*` scenarios.
    #[arg(long, default_value = "autoack")]
    scenario: String,
    /// Seconds measured, after one second of warm-up.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Message body size in bytes (default: 16, or 1024 for confirm).
    #[arg(long)]
    size: Option<usize>,
    /// Unconsumed messages per queue before publishers pause.
    #[arg(long, default_value_t = 2000)]
    max_outstanding: u64,
    /// backlog: messages to queue up before draining them.
    #[arg(long, default_value_t = 100_000)]
    count: u64,
    /// backlog: the broker's process id, to report its resident memory and to wait until it
    /// has settled (its CPU at rest) before draining.
    #[arg(long)]
    broker_pid: Option<u32>,
    /// backlog: persistent messages on a durable queue instead of transient ones.
    #[arg(long)]
    persistent: bool,
    /// backlog: leave the messages in the queue (to measure a restart with a backlog).
    #[arg(long)]
    no_drain: bool,
    /// backlog: drain what an earlier `--no-drain` run (as persistent or not) left, publishing nothing
    /// (to profile the drain alone).
    #[arg(long)]
    drain_only: bool,
    /// latency: messages per second, published at a steady pace.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// conns: idle connections to open; conns-busy: connections publishing once a second.
    #[arg(long, default_value_t = 1000)]
    connections: usize,
}

/// Counters shared by the tasks of one run.
#[derive(Default)]
struct Meter {
    published: AtomicU64,
    consumed: AtomicU64,
    stop: AtomicBool,
    progress: Notify,
    /// Set once the warm-up is over: latencies are recorded from then on.
    measuring: AtomicBool,
    /// Confirm scenarios: microseconds from writing a batch of publishes to the confirm of
    /// its last message, one sample per batch.
    confirm_us: std::sync::Mutex<Vec<u64>>,
}

/// CPU seconds this process has used (user + system), from /proc.
fn cpu_seconds() -> f64 {
    cpu_seconds_of("self").unwrap_or(0.0)
}

/// CPU time (user and system, every thread) that process `pid` (or "self") has used so far.
fn cpu_seconds_of(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let after = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    Some((ticks(11) + ticks(12)) / 100.0)
}

/// Queues of the many-queues scenario, each with its own consumer connection.
const MANY_QUEUES: usize = 1000;
/// Independent publisher-queue-consumer sets of the cores scenario.
const CORES_PAIRS: usize = 4;
/// Bodies per precomputed publish batch: about this many bytes, and at most 100 messages.
const BATCH_BYTES: usize = 64 * 1024;
/// Bodies left unconsumed, at most, before publishers pause.
const OUTSTANDING_BYTES: usize = 64 * 1024 * 1024;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn main() -> Result<()> {
    let args = Args::parse();
    if args.scenario == "echo-server" {
        return echo_server(&args.addr);
    }
    if args.scenario == "relay-server" {
        return relay::relay_server(&args.addr);
    }
    if let Some(ca) = &args.tls_ca {
        client::use_tls(ca)?;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> Result<()> {
    match args.scenario.as_str() {
        "backlog" => return backlog::backlog(args).await,
        "latency" => return latency(args).await,
        "conns" => return conns(args).await,
        "conns-busy" => return busy::conns_busy(args).await,
        "echo" => return echo(args).await,
        "relay" => return relay::relay(args).await,
        _ => {}
    }
    let run_id = std::process::id();
    let meter = Arc::new(Meter::default());
    let Some(shape) = Shape::of(&args.scenario) else {
        return Err(format!("unknown scenario {}", args.scenario).into());
    };
    let Shape {
        queues,
        ack,
        prefetch,
        multiple_every,
        publishers,
        default_size,
    } = shape;
    let size = args.size.unwrap_or(default_size);
    let body = vec![b'x'; size];
    let mut tasks = Vec::new();
    let names: Vec<String> = (0..queues).map(|i| format!("perf-{run_id}-{i}")).collect();
    let mut setup = Client::connect(&args.addr, &args.user, &args.password).await?;
    // confirm, confirm-16: persistent messages on a durable queue, with publisher confirms.
    let durable = args.scenario.starts_with("confirm");
    for q in &names {
        setup.declare_queue(q, durable).await?;
        setup.purge(q).await?;
    }
    let (exchange, keys) = topology(&mut setup, &args.scenario, &names, run_id).await?;
    for q in &names {
        let mut c = Client::connect(&args.addr, &args.user, &args.password).await?;
        if ack {
            c.qos(prefetch).await?;
        }
        c.consume(q, !ack).await?;
        tasks.push(tokio::spawn(consumer(
            c,
            meter.clone(),
            ack,
            multiple_every,
        )));
    }
    let confirm = durable;
    // Every message goes to one queue, but fanout's to all of them.
    let fan = if args.scenario == "fanout" {
        queues as u64
    } else {
        1
    };
    let batch_len = if confirm {
        32
    } else {
        (BATCH_BYTES / size).clamp(1, 100)
    };
    // Unconsumed messages before publishers pause: per queue, and at most OUTSTANDING_BYTES
    // of bodies (large messages would otherwise pile up gigabytes in a slow broker).
    let per_queue = if args.scenario == "many-queues" {
        100
    } else {
        args.max_outstanding
    };
    let limit = (per_queue * queues as u64).min((OUTSTANDING_BYTES / size).max(1) as u64);
    let plan = PublishPlan {
        exchange: &exchange,
        keys: &keys,
        body: &body,
        durable,
        confirm,
        batch_len,
        fan,
        limit,
    };
    tasks.extend(spawn_publishers(&args, &meter, publishers, &plan).await?);

    let (rate, cpu) = measure(&meter, args.seconds).await;
    for t in tasks {
        t.abort();
    }
    for q in &names {
        let _ = setup.delete_queue(q).await;
    }
    report(&args.scenario, rate, size, cpu, &meter);
    Ok(())
}

/// Prints a throughput scenario's JSON line.
fn report(scenario: &str, rate: f64, size: usize, cpu: f64, meter: &Meter) {
    let confirm_p99 = meter
        .confirm_us
        .lock()
        .ok()
        .and_then(|mut v| percentile(&mut v, 0.99))
        .map_or(String::new(), |p| format!(",\"p99_confirm_us\":{p}"));
    println!(
        "{{\"scenario\":\"{}\",\"msgs_per_s\":{:.0},\"bytes_per_s\":{:.0},\"generator_cpu\":{:.3},\"size\":{},\"lower_bound\":{}{}}}",
        scenario,
        rate,
        rate * size as f64,
        cpu,
        size,
        cpu > 0.9,
        confirm_p99
    );
}

/// How a throughput scenario is built.
struct Shape {
    queues: usize,
    /// Consumers acknowledge (else no-ack).
    ack: bool,
    prefetch: u16,
    /// One multiple ack per this many deliveries (1: one ack each).
    multiple_every: u64,
    publishers: usize,
    default_size: usize,
}

impl Shape {
    fn of(scenario: &str) -> Option<Shape> {
        let (queues, ack, prefetch, multiple_every) = match scenario {
            "autoack" | "topic" | "large-64k" | "large-1m" => (1, false, 0, 0),
            "ack" => (1, true, 100, 1),
            "ack-multi" | "confirm" | "confirm-16" => (1, true, 1000, 100),
            "fanout" => (10, false, 0, 0),
            "many-queues" => (MANY_QUEUES, false, 0, 0),
            "cores" => (CORES_PAIRS, false, 0, 0),
            _ => return None,
        };
        Some(Shape {
            queues,
            ack,
            prefetch,
            multiple_every,
            // many-queues: 10 publishers, each spreading over a tenth of the queues.
            publishers: match scenario {
                "many-queues" => 10,
                // One publisher per queue: independent pairs a broker can spread over cores.
                "cores" => CORES_PAIRS,
                // 16 publishers with 256 confirms in flight each, to one queue.
                "confirm-16" => 16,
                _ => 1,
            },
            default_size: match scenario {
                "confirm" | "confirm-16" => 1024,
                "large-64k" => 64 * 1024,
                "large-1m" => 1024 * 1024,
                _ => 16,
            },
        })
    }
}

/// What the publishers of a throughput scenario send, and how much they let pile up.
struct PublishPlan<'a> {
    exchange: &'a str,
    keys: &'a [String],
    body: &'a [u8],
    durable: bool,
    confirm: bool,
    batch_len: usize,
    fan: u64,
    limit: u64,
}

/// Connects `publishers` publishers, each sending to its share of the routing keys.
async fn spawn_publishers(
    args: &Args,
    meter: &Arc<Meter>,
    publishers: usize,
    plan: &PublishPlan<'_>,
) -> Result<Vec<tokio::task::JoinHandle<Result<()>>>> {
    let mut tasks = Vec::new();
    for n in 0..publishers {
        // Each publisher its share of the keys; with fewer keys than publishers (confirm-16:
        // one queue), publishers share them.
        let mine: Vec<&String> = if plan.keys.len() >= publishers {
            plan.keys.iter().skip(n).step_by(publishers).collect()
        } else {
            plan.keys.iter().cycle().skip(n).take(1).collect()
        };
        let mut p = Client::connect(&args.addr, &args.user, &args.password).await?;
        if plan.confirm {
            p.confirm_select().await?;
        }
        // Enough precomputed batches that every routing key is published (topic: all
        // 1,000; many-queues: each of this publisher's queues).
        let batch_len = plan.batch_len;
        let batches: Vec<Vec<u8>> = (0..mine.len().div_ceil(batch_len))
            .map(|b| {
                let mut batch = Vec::new();
                for i in 0..batch_len {
                    let key = mine[(b * batch_len + i) % mine.len()];
                    publish_frames(&mut batch, plan.exchange, key, plan.body, plan.durable);
                }
                batch
            })
            .collect();
        tasks.push(tokio::spawn(publisher(
            p,
            meter.clone(),
            batches,
            batch_len as u64,
            plan.fan,
            plan.limit,
            plan.confirm,
        )));
    }
    Ok(tasks)
}

/// Declares what a throughput scenario publishes through; returns the exchange and the
/// routing keys to publish with.
async fn topology(
    setup: &mut Client,
    scenario: &str,
    names: &[String],
    run_id: u32,
) -> Result<(String, Vec<String>)> {
    Ok(match scenario {
        "fanout" => {
            let x = format!("perf-fanout-{run_id}");
            setup.declare_exchange(&x, "fanout").await?;
            for q in names {
                setup.bind(q, &x, "").await?;
            }
            (x, vec![String::new()])
        }
        "topic" => {
            let x = format!("perf-topic-{run_id}");
            setup.declare_exchange(&x, "topic").await?;
            // 1,000 bindings; each routing key matches exactly one of them.
            for i in 0..1000 {
                setup
                    .bind(&names[0], &x, &format!("region{i}.*.orders"))
                    .await?;
            }
            let keys = (0..1000)
                .map(|i| format!("region{i}.shop.orders"))
                .collect();
            (x, keys)
        }
        // Through the default exchange, to every queue in turn.
        "many-queues" | "cores" => (String::new(), names.to_vec()),
        _ => (String::new(), vec![names[0].clone()]),
    })
}

/// Lets a running scenario warm up for a second, then measures the consumed rate and the
/// generator's own CPU over `seconds`, and stops it.
async fn measure(meter: &Meter, seconds: u64) -> (f64, f64) {
    tokio::time::sleep(Duration::from_secs(1)).await;
    meter.measuring.store(true, Ordering::Relaxed);
    let (c0, cpu0, t0) = (
        meter.consumed.load(Ordering::Relaxed),
        cpu_seconds(),
        Instant::now(),
    );
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let (c1, cpu1, elapsed) = (
        meter.consumed.load(Ordering::Relaxed),
        cpu_seconds(),
        t0.elapsed(),
    );
    meter.stop.store(true, Ordering::Relaxed);
    meter.progress.notify_waiters();
    (
        (c1 - c0) as f64 / elapsed.as_secs_f64(),
        (cpu1 - cpu0) / elapsed.as_secs_f64(),
    )
}

/// `latency`: one publisher at a steady `--rate`, one no-ack consumer; each body carries its
/// send time, and the consumer records how long it took. Reports percentiles in
/// microseconds.
async fn latency(args: Args) -> Result<()> {
    let size = args.size.unwrap_or(16).max(8);
    let queue = format!("perf-latency-{}", std::process::id());
    let mut setup = Client::connect(&args.addr, &args.user, &args.password).await?;
    setup.declare_queue(&queue, false).await?;
    setup.purge(&queue).await?;
    let mut consumer = Client::connect(&args.addr, &args.user, &args.password).await?;
    consumer.consume(&queue, true).await?;
    let mut publisher = Client::connect(&args.addr, &args.user, &args.password).await?;
    let origin = Instant::now();
    let warm_up = Duration::from_secs(1);
    let measured = Duration::from_secs(args.seconds);
    let rate = args.rate.max(1);
    let cpu0 = cpu_seconds();
    let publishing = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_nanos(1_000_000_000 / rate));
        let mut frame = Vec::with_capacity(256);
        let mut body = vec![b'x'; size];
        loop {
            tick.tick().await;
            if origin.elapsed() > warm_up + measured + Duration::from_millis(200) {
                return Ok::<(), std::io::Error>(());
            }
            let sent = origin.elapsed().as_nanos() as u64;
            body[..8].copy_from_slice(&sent.to_be_bytes());
            frame.clear();
            publish_frames(&mut frame, "", &queue, &body, false);
            publisher.stream.write_all(&frame).await?;
        }
    });
    let mut samples: Vec<u64> = Vec::new();
    while origin.elapsed() < warm_up + measured {
        let read = tokio::time::timeout(Duration::from_millis(100), consumer.fill()).await;
        match read {
            Ok(r) => r?,
            Err(_) => continue,
        }
        let now = origin.elapsed().as_nanos() as u64;
        consumer.frames(|h, payload| {
            if h.kind == 3 && payload.len() >= 8 {
                let sent = u64::from_be_bytes(payload[..8].try_into().unwrap_or([0; 8]));
                if Duration::from_nanos(sent) >= warm_up {
                    samples.push(now.saturating_sub(sent) / 1000);
                }
            }
        })?;
    }
    publishing.abort();
    let cpu = (cpu_seconds() - cpu0) / origin.elapsed().as_secs_f64();
    let _ = setup
        .delete_queue(&format!("perf-latency-{}", std::process::id()))
        .await;
    print_latency("latency", rate, samples, cpu);
    Ok(())
}

/// `echo-server`: echoes every byte back, a thread per connection, until killed.
fn echo_server(addr: &str) -> Result<()> {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind(addr)?;
    for stream in listener.incoming() {
        let mut stream = stream?;
        stream.set_nodelay(true)?;
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(n) = stream.read(&mut buf) {
                if n == 0 || stream.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        });
    }
    Ok(())
}

/// `echo`: the `latency` pattern (one 16-byte message carrying its send time, at a steady
/// `--rate`) against a TCP echo server instead of a broker.
async fn echo(args: Args) -> Result<()> {
    use tokio::io::AsyncReadExt;
    let stream = tokio::net::TcpStream::connect(&args.addr).await?;
    stream.set_nodelay(true)?;
    let (mut rx, mut tx) = stream.into_split();
    let origin = Instant::now();
    let warm_up = Duration::from_secs(1);
    let measured = Duration::from_secs(args.seconds);
    let rate = args.rate.max(1);
    let cpu0 = cpu_seconds();
    let sending = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_nanos(1_000_000_000 / rate));
        loop {
            tick.tick().await;
            let mut msg = [b'x'; 16];
            msg[..8].copy_from_slice(&(origin.elapsed().as_nanos() as u64).to_be_bytes());
            if tx.write_all(&msg).await.is_err() {
                return;
            }
        }
    });
    let mut samples = Vec::new();
    let mut pending = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    while origin.elapsed() < warm_up + measured {
        let n = match tokio::time::timeout(Duration::from_millis(100), rx.read(&mut chunk)).await {
            Ok(r) => r?,
            Err(_) => continue,
        };
        if n == 0 {
            return Err("the echo server closed the connection".into());
        }
        let now = origin.elapsed().as_nanos() as u64;
        pending.extend_from_slice(&chunk[..n]);
        let whole = pending.len() / 16 * 16;
        for msg in pending[..whole].chunks_exact(16) {
            let sent = u64::from_be_bytes(msg[..8].try_into().unwrap_or([0; 8]));
            if Duration::from_nanos(sent) >= warm_up {
                samples.push(now.saturating_sub(sent) / 1000);
            }
        }
        pending.drain(..whole);
    }
    sending.abort();
    let cpu = (cpu_seconds() - cpu0) / origin.elapsed().as_secs_f64();
    print_latency("echo", rate, samples, cpu);
    Ok(())
}

/// Prints the percentiles of latency samples (microseconds) as the scenario's JSON line.
fn print_latency(scenario: &str, rate: u64, samples: Vec<u64>, cpu: f64) {
    print_latency_with(scenario, rate, samples, cpu, "");
}

/// The `p` quantile of `samples` (sorts them); None if there are none.
fn percentile(samples: &mut [u64], p: f64) -> Option<u64> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_unstable();
    let i = ((samples.len() as f64 - 1.0) * p).round() as usize;
    Some(samples[i.min(samples.len() - 1)])
}

/// [`print_latency`] with more JSON fields (`extra` starts with a comma).
fn print_latency_with(scenario: &str, rate: u64, mut samples: Vec<u64>, cpu: f64, extra: &str) {
    let mut pct = |p: f64| -> u64 { percentile(&mut samples, p).unwrap_or(0) };
    let (p50, p99, p999) = (pct(0.50), pct(0.99), pct(0.999));
    println!(
        "{{\"scenario\":\"{}\",\"rate\":{},\"samples\":{},\"p50_us\":{},\"p99_us\":{},\"p999_us\":{},\"generator_cpu\":{:.3},\"lower_bound\":{}{}}}",
        scenario,
        rate,
        samples.len(),
        p50,
        p99,
        p999,
        cpu,
        cpu > 0.9,
        extra
    );
}

/// `conns`: opens `--connections` idle connections (each with a channel) and reports how
/// much the broker's resident memory grew per connection.
async fn conns(args: Args) -> Result<()> {
    let before = rss_kib(args.broker_pid);
    let mut clients = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        clients.push(Client::connect(&args.addr, &args.user, &args.password).await?);
    }
    // Let the broker settle (lazy allocations, its own timers).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(args.broker_pid);
    let per_conn = match (before, after) {
        (Some(b), Some(a)) => format!(
            "{:.1}",
            a.saturating_sub(b) as f64 / args.connections as f64
        ),
        _ => "null".to_owned(),
    };
    drop(clients);
    println!(
        "{{\"scenario\":\"conns\",\"connections\":{},\"rss_kib_before\":{},\"rss_kib_after\":{},\"kib_per_connection\":{}}}",
        args.connections,
        before.map_or("null".to_owned(), |v| v.to_string()),
        after.map_or("null".to_owned(), |v| v.to_string()),
        per_conn
    );
    Ok(())
}

/// Resident memory of a process in KiB, from /proc.
fn rss_kib(pid: Option<u32>) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid?)).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Writes precomputed batches of publishes as long as consumers keep up.
async fn publisher(
    mut c: Client,
    meter: Arc<Meter>,
    batches: Vec<Vec<u8>>,
    per_batch: u64,
    fan: u64,
    limit: u64,
    confirm: bool,
) -> Result<()> {
    let confirmed = Arc::new(AtomicU64::new(0));
    let mut next = batches.iter().cycle();
    if confirm {
        // Confirms come back on the publisher's own connection.
        let (mut reader, writer) = tokio::io::split(c.stream);
        let counter = confirmed.clone();
        let notify = meter.clone();
        // When each batch was written, by the delivery tag of its last message.
        let sent_at = Arc::new(std::sync::Mutex::new(VecDeque::<(u64, Instant)>::new()));
        let confirmed_at = sent_at.clone();
        let wake = Arc::new(Notify::new());
        let woken = wake.clone();
        tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let mut buf = vec![0u8; 1 << 16];
            let mut pending = Vec::new();
            loop {
                let n = match reader.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                pending.extend_from_slice(&buf[..n]);
                let mut at = 0;
                while let Ok(Some(h)) = lepus::protocol::frame::peek_frame(&pending[at..], 0) {
                    if pending.len() - at < h.total_len() {
                        break;
                    }
                    let p = &pending[at + 7..at + 7 + h.size as usize];
                    if p.len() >= 12 && p[0..4] == [0, 60, 0, 80] {
                        let tag = u64::from_be_bytes(p[4..12].try_into().unwrap_or([0; 8]));
                        counter.fetch_max(tag, Ordering::Relaxed);
                        record_confirms(&notify, &confirmed_at, tag);
                        woken.notify_one();
                    }
                    at += h.total_len();
                }
                pending.drain(..at);
            }
        });
        let mut writer = writer;
        let mut sent = 0u64;
        loop {
            if meter.stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            let published = meter.published.load(Ordering::Relaxed);
            // 256 confirms in flight on this connection, and the queue bounded like the
            // other scenarios. This publisher's confirms wake it alone.
            if sent.saturating_sub(confirmed.load(Ordering::Relaxed)) >= 256 {
                wake.notified().await;
                continue;
            }
            if published.saturating_sub(meter.consumed.load(Ordering::Relaxed)) > limit {
                meter.progress.notified().await;
                continue;
            }
            if let Some(batch) = next.next() {
                sent += per_batch;
                if let Ok(mut q) = sent_at.lock() {
                    q.push_back((sent, Instant::now()));
                }
                writer.write_all(batch).await?;
            }
            meter.published.fetch_add(per_batch, Ordering::Relaxed);
        }
    }
    loop {
        if meter.stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        let published = meter.published.load(Ordering::Relaxed) * fan;
        if published.saturating_sub(meter.consumed.load(Ordering::Relaxed)) > limit {
            meter.progress.notified().await;
            continue;
        }
        if let Some(batch) = next.next() {
            c.stream.write_all(batch).await?;
        }
        meter.published.fetch_add(per_batch, Ordering::Relaxed);
    }
}

/// Records the confirm latency of every batch whose last message `tag` confirms.
fn record_confirms(meter: &Meter, sent_at: &std::sync::Mutex<VecDeque<(u64, Instant)>>, tag: u64) {
    let Ok(mut q) = sent_at.lock() else {
        return;
    };
    let measuring = meter.measuring.load(Ordering::Relaxed);
    let mut samples = Vec::new();
    while let Some(&(last, at)) = q.front() {
        if last > tag {
            break;
        }
        q.pop_front();
        if measuring {
            samples.push(at.elapsed().as_micros() as u64);
        }
    }
    if !samples.is_empty()
        && let Ok(mut all) = meter.confirm_us.lock()
    {
        all.extend(samples);
    }
}

/// Counts deliveries, acknowledging them if asked: one ack per delivery (`every` 1) or one
/// multiple ack per `every` deliveries.
async fn consumer(mut c: Client, meter: Arc<Meter>, ack: bool, every: u64) -> Result<()> {
    let mut acks = Vec::with_capacity(64 * 1024);
    let mut since_ack = 0u64;
    loop {
        c.fill().await?;
        let mut delivered = 0u64;
        let mut last_tag = 0u64;
        c.frames(|h, payload| {
            if h.kind == 1
                && let Some(tag) = deliver_tag(payload)
            {
                delivered += 1;
                if ack {
                    if every <= 1 {
                        ack_frame(&mut acks, tag, false);
                    } else {
                        last_tag = tag;
                        since_ack += 1;
                        if since_ack >= every {
                            ack_frame(&mut acks, tag, true);
                            since_ack = 0;
                        }
                    }
                }
            }
        })?;
        let _ = last_tag;
        if !acks.is_empty() {
            c.stream.write_all(&acks).await?;
            acks.clear();
        }
        if delivered > 0 {
            meter.consumed.fetch_add(delivered, Ordering::Relaxed);
            meter.progress.notify_one();
        }
    }
}
