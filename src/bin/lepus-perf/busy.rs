//! `conns-busy`: many connections, each publishing a little, as a fleet of devices or
//! services does: `--connections` connections (10,000 in `benches/compare`) each publish one
//! 16-byte message a second, spread evenly over the second, to one queue that one no-ack
//! consumer drains. Reports the broker's resident memory (its peak while measuring) and the
//! publish-to-delivery latency.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;

use crate::client::{Client, publish_frames};
use crate::{Args, Result, cpu_seconds, print_latency_with, rss_kib};

/// Each connection publishes once per this period.
const PERIOD: Duration = Duration::from_secs(1);

pub async fn conns_busy(args: Args) -> Result<()> {
    let queue = format!("perf-busy-{}", std::process::id());
    let mut setup = Client::connect(&args.addr, &args.user, &args.password).await?;
    setup.declare_queue(&queue, false).await?;
    setup.purge(&queue).await?;
    let mut consumer = Client::connect(&args.addr, &args.user, &args.password).await?;
    consumer.consume(&queue, true).await?;
    let origin = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    // Deliveries are read from the start (a consumer that does not read is closed by a
    // broker's send timeout) and timed once every connection is publishing.
    let measure_from_ns = Arc::new(AtomicU64::new(u64::MAX));
    let consuming = tokio::spawn(consume(
        consumer,
        origin,
        measure_from_ns.clone(),
        stop.clone(),
    ));
    let mut publishers = Vec::with_capacity(args.connections);
    for i in 0..args.connections {
        let client = Client::connect(&args.addr, &args.user, &args.password).await?;
        // Spread over the period, so the broker sees a steady stream, not bursts.
        let offset = PERIOD.mul_f64(i as f64 / args.connections as f64);
        publishers.push(tokio::spawn(publish_every_period(
            client,
            queue.clone(),
            origin,
            offset,
            stop.clone(),
        )));
    }
    let connected = origin.elapsed();
    // Two periods for every connection to be publishing, then measure.
    let warm_up = connected + 2 * PERIOD;
    measure_from_ns.store(warm_up.as_nanos() as u64, Ordering::Relaxed);
    let cpu0 = cpu_seconds();
    let mut peak_rss = 0;
    while origin.elapsed() < warm_up + Duration::from_secs(args.seconds) {
        peak_rss = peak_rss.max(rss_kib(args.broker_pid).unwrap_or(0));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for p in publishers {
        p.abort();
    }
    let samples = consuming.await??;
    let cpu = (cpu_seconds() - cpu0) / (origin.elapsed() - connected).as_secs_f64();
    let _ = setup.delete_queue(&queue).await;
    print_latency_with(
        "conns-busy",
        args.connections as u64,
        samples,
        cpu,
        &format!(
            ",\"connections\":{},\"rss_kib\":{},\"connect_s\":{:.1}",
            args.connections,
            peak_rss,
            connected.as_secs_f64()
        ),
    );
    Ok(())
}

/// Reads deliveries until stopped; returns the latencies (microseconds) of the messages
/// sent from `measure_from_ns` on.
async fn consume(
    mut consumer: Client,
    origin: Instant,
    measure_from_ns: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> Result<Vec<u64>> {
    let mut samples = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        match tokio::time::timeout(Duration::from_millis(100), consumer.fill()).await {
            Ok(r) => r?,
            Err(_) => continue,
        }
        let now = origin.elapsed().as_nanos() as u64;
        let from = measure_from_ns.load(Ordering::Relaxed);
        consumer.frames(|h, payload| {
            if h.kind == 3 && payload.len() >= 8 {
                let sent = u64::from_be_bytes(payload[..8].try_into().unwrap_or([0; 8]));
                if sent >= from {
                    samples.push(now.saturating_sub(sent) / 1000);
                }
            }
        })?;
    }
    Ok(samples)
}

/// Publishes one message carrying its send time every period, from `offset` on.
async fn publish_every_period(
    mut client: Client,
    queue: String,
    origin: Instant,
    offset: Duration,
    stop: Arc<AtomicBool>,
) -> Result<()> {
    let mut tick = tokio::time::interval_at((origin + offset).into(), PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut frame = Vec::with_capacity(128);
    let mut body = [b'x'; 16];
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let sent = origin.elapsed().as_nanos() as u64;
        body[..8].copy_from_slice(&sent.to_be_bytes());
        frame.clear();
        publish_frames(&mut frame, "", &queue, &body, false);
        client.stream.write_all(&frame).await?;
    }
    Ok(())
}
