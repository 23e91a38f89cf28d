//! A reference for the `large-*` scenarios: how fast this machine moves bytes from one
//! loopback connection to another through a process that reads them into its memory and
//! writes them out again, with no protocol at all. A broker does at least that work for a
//! body it has to hold, so `relay` against `relay-server`, pinned like the brokers, shows
//! roughly the most a broker can move here with the kernel's socket copies. It is not a
//! strict bound: this relay is one blocking thread per pair, and with 1 MiB bodies Lepus's
//! non-blocking loop has measured above it.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{Args, Result, cpu_seconds};

/// What the relay reads at a time: as much as Lepus reads at a time from a connection that
/// sends large frames.
const RELAY_READ_BYTES: usize = 256 * 1024;
/// What the receiving side reads at a time, as lepus-perf's consumers do at most.
const RECEIVE_READ_BYTES: usize = 1024 * 1024;

/// `relay-server`: pairs connections, a sender (its first byte `s`) with the receiver that
/// connects after it (its first byte `r`), and copies every byte from the one to the other
/// on a thread of its own, until killed. A connection that says neither (a probe of the
/// port) is dropped.
pub fn relay_server(addr: &str) -> Result<()> {
    let listener = std::net::TcpListener::bind(addr)?;
    let mut sender = None;
    loop {
        let (mut conn, _) = listener.accept()?;
        let mut role = [0u8; 1];
        if conn.read_exact(&mut role).is_err() {
            continue;
        }
        match (&role, sender.take()) {
            (b"s", _) => sender = Some(conn),
            (b"r", Some(from)) => {
                conn.set_nodelay(true)?;
                std::thread::spawn(move || copy(from, conn));
            }
            _ => {}
        }
    }
}

/// Copies `from` to `to` until either closes.
fn copy(mut from: std::net::TcpStream, mut to: std::net::TcpStream) {
    let mut buf = vec![0u8; RELAY_READ_BYTES];
    while let Ok(n) = from.read(&mut buf) {
        if n == 0 || to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
}

/// `relay`: writes `--size` bytes at a time (a `large-*` message's body) through a
/// `relay-server` as fast as it takes them, and reports the bytes a second that came out.
pub async fn relay(args: Args) -> Result<()> {
    let size = args.size.unwrap_or(64 * 1024).max(1);
    let mut sender = tokio::net::TcpStream::connect(&args.addr).await?;
    sender.set_nodelay(true)?;
    sender.write_all(b"s").await?;
    let mut receiver = tokio::net::TcpStream::connect(&args.addr).await?;
    receiver.write_all(b"r").await?;
    let sending = tokio::spawn(async move {
        let chunk = vec![b'x'; size];
        // Yielding after each chunk lets the receiver drain as it goes; without it the
        // sender fills its socket before the receiver runs, and the relay idles a quarter
        // of the time (1.1 against 2.0 GB/s in one measurement).
        while sender.write_all(&chunk).await.is_ok() {
            tokio::task::yield_now().await;
        }
    });
    let mut buf = vec![0u8; RECEIVE_READ_BYTES];
    let warm_up = Duration::from_secs(1);
    let origin = Instant::now();
    while origin.elapsed() < warm_up {
        if receiver.read(&mut buf).await? == 0 {
            return Err("the relay closed the connection".into());
        }
    }
    let (cpu0, t0) = (cpu_seconds(), Instant::now());
    let measured = Duration::from_secs(args.seconds);
    let mut bytes = 0u64;
    while t0.elapsed() < measured {
        match receiver.read(&mut buf).await? {
            0 => return Err("the relay closed the connection".into()),
            n => bytes += n as u64,
        }
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu = (cpu_seconds() - cpu0) / elapsed;
    sending.abort();
    println!(
        "{{\"scenario\":\"relay\",\"bytes_per_s\":{:.0},\"generator_cpu\":{:.3},\"size\":{},\"lower_bound\":{}}}",
        bytes as f64 / elapsed,
        cpu,
        size,
        cpu > 0.9
    );
    Ok(())
}
