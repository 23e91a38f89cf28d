//! The `lepus` binary: parses the command line and runs the broker until SIGTERM or SIGINT.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use lepus::{Config, Server};

/// An AMQP 0-9-1 message broker, compatible with RabbitMQ clients.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Address to accept AMQP connections on (repeatable, or comma-separated in LEPUS_LISTEN).
    /// The default, `[::]:5672`, takes IPv4 and IPv6 clients.
    #[arg(
        long = "listen",
        env = "LEPUS_LISTEN",
        value_delimiter = ',',
        default_value = "[::]:5672"
    )]
    listen: Vec<SocketAddr>,
    /// How log lines are written: `text`, or `json` for log collectors.
    #[arg(
        long = "log-format",
        env = "LEPUS_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    log_format: LogFormat,
    /// Directory for durable state.
    #[arg(
        long = "data-dir",
        env = "LEPUS_DATA_DIR",
        default_value = "lepus-data"
    )]
    data_dir: PathBuf,
    /// `product` reported to clients in the server properties (default `RabbitMQ`, which
    /// clients such as kombu check before relying on RabbitMQ's semantics).
    #[arg(long, env = "LEPUS_PRODUCT")]
    product: Option<String>,
    /// `version` reported to clients in the server properties (default `3.10.8`, the
    /// RabbitMQ release whose behaviour Lepus implements).
    #[arg(long = "product-version", env = "LEPUS_PRODUCT_VERSION")]
    product_version: Option<String>,
    /// Message bytes queues keep in memory before paging their tails out to disk.
    #[arg(long = "memory-budget-mib", env = "LEPUS_MEMORY_BUDGET_MIB")]
    memory_budget_mib: Option<usize>,
    /// Size of each queue log segment file.
    #[arg(long = "segment-mib", env = "LEPUS_SEGMENT_MIB")]
    segment_mib: Option<u64>,
    /// How long output may wait for a client that reads none of it before the connection is
    /// closed (RabbitMQ's `tcp_listen_options.send_timeout`, 30 s by default).
    #[arg(long = "send-timeout-ms", env = "LEPUS_SEND_TIMEOUT_MS")]
    send_timeout_ms: Option<u64>,
    /// Memory alarm threshold: a fraction of the machine's (or cgroup's) memory such as
    /// `0.4` (RabbitMQ's default), or a size such as `2GB`.
    #[arg(long = "vm-memory-high-watermark", env = "LEPUS_VM_MEMORY_HIGH_WATERMARK", value_parser = parse_watermark)]
    vm_memory_high_watermark: Option<lepus::config::MemoryWatermark>,
    /// Disk alarm threshold: free space on the data directory's disk such as `50MB`
    /// (RabbitMQ's default), or `mem_relative:1.0`, a multiple of the machine's memory.
    #[arg(long = "disk-free-limit", env = "LEPUS_DISK_FREE_LIMIT", value_parser = parse_disk_limit)]
    disk_free_limit: Option<lepus::config::DiskFreeLimit>,
    /// Start even if a definitions journal has damaged lines, skipping them (the changes
    /// they held are lost). Without it, such a start is refused with the file and line.
    #[arg(long = "skip-damaged-definitions")]
    skip_damaged_definitions: bool,
}

fn parse_watermark(text: &str) -> Result<lepus::config::MemoryWatermark, String> {
    lepus::config::MemoryWatermark::parse(text)
        .ok_or_else(|| format!("not a fraction (0.4) or a size (2GB): {text}"))
}

fn parse_disk_limit(text: &str) -> Result<lepus::config::DiskFreeLimit, String> {
    lepus::config::DiskFreeLimit::parse(text)
        .ok_or_else(|| format!("not a size (50MB) or mem_relative:F: {text}"))
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// One human-readable line per event; coloured only on a terminal.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Logs to standard output, filtered by `LEPUS_LOG` (`info` by default). Escape codes only
/// go to a terminal: a log file or a journal gets plain text.
fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LEPUS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
            .init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    init_logging(args.log_format);
    let mut config = Config {
        listen: args.listen,
        data_dir: args.data_dir,
        skip_damaged_definitions: args.skip_damaged_definitions,
        ..Config::default()
    };
    if let Some(p) = args.product {
        config.product = p;
    }
    if let Some(v) = args.product_version {
        config.version = v;
    }
    if let Some(mib) = args.memory_budget_mib {
        config.limits.memory_budget_bytes = mib.saturating_mul(1 << 20);
    }
    if let Some(ms) = args.send_timeout_ms {
        config.limits.send_timeout_ms = ms.max(1);
    }
    if let Some(w) = args.vm_memory_high_watermark {
        config.limits.vm_memory_high_watermark = w;
    }
    if let Some(d) = args.disk_free_limit {
        config.limits.disk_free_limit = d;
    }
    if let Some(mib) = args.segment_mib {
        config.limits.segment_bytes = mib.max(1).saturating_mul(1 << 20);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lepus: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let server = match Server::start(config).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot start");
                return std::process::ExitCode::FAILURE;
            }
        };
        let addrs: Vec<String> = server.local_addrs().iter().map(|a| a.to_string()).collect();
        tracing::info!(
            "Lepus {} ready, listening for AMQP on {}",
            env!("CARGO_PKG_VERSION"),
            addrs.join(", ")
        );
        wait_for_signal().await;
        tracing::info!("shutting down");
        server.shutdown().await;
        std::process::ExitCode::SUCCESS
    })
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
