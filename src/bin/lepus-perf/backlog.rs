//! `backlog`: how much memory a broker needs to hold a backlog, and how fast one consumer
//! drains it.

use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;

use crate::client::{Client, deliver_tag, publish_frames};
use crate::{Args, Result, cpu_seconds, cpu_seconds_of, rss_kib};

/// `backlog`: publishes `--count` transient messages into one queue with no consumer, reports
/// the broker's memory while it holds them, then drains the queue with one no-ack consumer.
pub async fn backlog(args: Args) -> Result<()> {
    let size = args.size.unwrap_or(1024);
    let body = vec![b'x'; size];
    // A backlog left for a later `--drain-only` run needs a name that run can find.
    let queue = if args.persistent {
        "perf-backlog-durable".to_owned()
    } else if args.no_drain || args.drain_only {
        "perf-backlog-left".to_owned()
    } else {
        format!("perf-backlog-{}", std::process::id())
    };
    let mut setup = Client::connect(&args.addr, &args.user, &args.password).await?;
    setup.declare_queue(&queue, args.persistent).await?;
    if args.drain_only {
        let count = u64::from(setup.queue_depth(&queue).await?);
        let drain_s = drain(&args, &queue, count).await?;
        println!(
            "{{\"scenario\":\"backlog\",\"count\":{},\"size\":{},\"drain_per_s\":{:.0}}}",
            count,
            size,
            count as f64 / drain_s
        );
        return Ok(());
    }
    setup.purge(&queue).await?;
    let rss_before = rss_kib(args.broker_pid);
    let cpu0 = cpu_seconds();

    let started = Instant::now();
    let mut p = Client::connect(&args.addr, &args.user, &args.password).await?;
    const BATCH: u64 = 100;
    let mut batch = Vec::new();
    for _ in 0..BATCH {
        publish_frames(&mut batch, "", &queue, &body, args.persistent);
    }
    let mut sent = 0;
    while sent < args.count {
        let n = BATCH.min(args.count - sent);
        if n == BATCH {
            p.stream.write_all(&batch).await?;
        } else {
            let mut last = Vec::new();
            for _ in 0..n {
                publish_frames(&mut last, "", &queue, &body, args.persistent);
            }
            p.stream.write_all(&last).await?;
        }
        sent += n;
    }
    // Publishing is asynchronous: the backlog is there when the queue says so.
    let deadline = Instant::now() + Duration::from_secs(600);
    while u64::from(setup.queue_depth(&queue).await?) < args.count {
        if Instant::now() > deadline {
            return Err("the queue never reached the backlog size".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let publish_s = started.elapsed().as_secs_f64();
    // A queue counts a message as soon as it holds it, but a broker may still be writing
    // the backlog to disk, or paging it out: held means that work is done. A drain started
    // at once measured that work too, whichever window it fell in: Lepus's persistent
    // drain measured 0.75M or 1.1M msg/s from run to run, and its publish the other way.
    settle(args.broker_pid).await;
    let rss_backlog = rss_kib(args.broker_pid);
    if args.no_drain {
        println!(
            "{{\"scenario\":\"backlog\",\"count\":{},\"size\":{},\"publish_per_s\":{:.0},\"rss_kib_backlog\":{}}}",
            args.count,
            size,
            args.count as f64 / publish_s,
            rss_backlog.map_or("null".to_owned(), |v| v.to_string()),
        );
        return Ok(());
    }

    let drain_s = drain(&args, &queue, args.count).await?;
    let cpu = (cpu_seconds() - cpu0) / started.elapsed().as_secs_f64();
    let _ = setup.delete_queue(&queue).await;
    let opt = |v: Option<u64>| v.map_or("null".to_owned(), |v| v.to_string());
    println!(
        "{{\"scenario\":\"backlog\",\"count\":{},\"size\":{},\"publish_per_s\":{:.0},\"drain_per_s\":{:.0},\"rss_kib_before\":{},\"rss_kib_backlog\":{},\"generator_cpu\":{:.3},\"lower_bound\":{}}}",
        args.count,
        size,
        args.count as f64 / publish_s,
        args.count as f64 / drain_s,
        opt(rss_before),
        opt(rss_backlog),
        cpu,
        cpu > 0.9
    );
    Ok(())
}

/// Drains `count` messages from `queue` with one no-ack consumer; returns the seconds it
/// took.
async fn drain(args: &Args, queue: &str, count: u64) -> Result<f64> {
    let started = Instant::now();
    let mut c = Client::connect(&args.addr, &args.user, &args.password).await?;
    c.consume(queue, true).await?;
    let mut consumed = 0u64;
    loop {
        // Deliveries may have come in the same read as the consume-ok: count what is
        // buffered before waiting for more (a small backlog used to wait forever).
        c.frames(|h, payload| {
            if h.kind == 1 && deliver_tag(payload).is_some() {
                consumed += 1;
            }
        })?;
        if consumed >= count {
            return Ok(started.elapsed().as_secs_f64());
        }
        c.fill().await?;
    }
}

/// A broker at rest uses less of a core than this while holding a backlog.
const SETTLED_CPU_SHARE: f64 = 0.03;
/// Over windows this long.
const SETTLE_WINDOW: Duration = Duration::from_millis(500);
/// Waiting for a broker to settle gives up after this long.
const SETTLE_MAX: Duration = Duration::from_secs(60);

/// Waits until broker `pid` has finished taking a backlog in: below `SETTLED_CPU_SHARE` of a
/// core over a `SETTLE_WINDOW` (as `benches/compare` waits between runs). Without a pid
/// (`--broker-pid`), returns at once.
async fn settle(pid: Option<u32>) {
    let Some(pid) = pid.map(|p| p.to_string()) else {
        return;
    };
    let give_up = Instant::now() + SETTLE_MAX;
    while Instant::now() < give_up {
        let Some(before) = cpu_seconds_of(&pid) else {
            return;
        };
        tokio::time::sleep(SETTLE_WINDOW).await;
        let Some(after) = cpu_seconds_of(&pid) else {
            return;
        };
        if after - before <= SETTLED_CPU_SHARE * SETTLE_WINDOW.as_secs_f64() {
            return;
        }
    }
}
