//! The `lepus` binary: reads the configuration (flags > environment > configuration file >
//! defaults), and runs the broker until SIGTERM or SIGINT.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser};
use lepus::config::file::{self, Origins};
use lepus::{Config, Server};

/// An AMQP 0-9-1 message broker, compatible with RabbitMQ clients.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// A configuration file in RabbitMQ's `rabbitmq.conf` format (RABBITMQ_CONFIG_FILE is
    /// read too, with or without its `.conf`).
    #[arg(long = "config", env = "LEPUS_CONFIG_FILE")]
    config: Option<PathBuf>,
    /// Print the effective configuration, and where each value came from, and exit.
    #[arg(long = "print-config")]
    print_config: bool,
    /// Address to accept AMQP connections on (repeatable, or comma-separated in LEPUS_LISTEN).
    /// The default, `[::]:5672`, takes IPv4 and IPv6 clients.
    #[arg(long = "listen", env = "LEPUS_LISTEN", value_delimiter = ',')]
    listen: Option<Vec<SocketAddr>>,
    /// Address of the management HTTP API (default `[::]:15672`), or `off`.
    #[arg(long = "management-listen", env = "LEPUS_MANAGEMENT_LISTEN", value_parser = parse_http_listen)]
    management_listen: Option<HttpListen>,
    /// Address of the Prometheus endpoint (default `[::]:15692`), or `off`.
    #[arg(long = "prometheus-listen", env = "LEPUS_PROMETHEUS_LISTEN", value_parser = parse_http_listen)]
    prometheus_listen: Option<HttpListen>,
    /// How log lines are written: `text` (the default), or `json` for log collectors.
    #[arg(long = "log-format", env = "LEPUS_LOG_FORMAT", value_enum)]
    log_format: Option<LogFormat>,
    /// Directory for durable state (default `lepus-data`).
    #[arg(long = "data-dir", env = "LEPUS_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// The node's name (default `lepus@` and the host name), as RabbitMQ's
    /// `RABBITMQ_NODENAME`: the management API and lepusctl name the node by it.
    #[arg(long = "node-name", env = "LEPUS_NODENAME")]
    node_name: Option<String>,
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
    /// Memory the queues, exchanges and bindings of all vhosts may hold together, as
    /// charged; past it declares and binds are refused (406).
    #[arg(long = "topology-budget-mib", env = "LEPUS_TOPOLOGY_BUDGET_MIB")]
    topology_budget_mib: Option<usize>,
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
    /// Connections from one address (an IPv6 /64) that have not opened yet, at once (256):
    /// raise it for many clients behind one NAT or proxy that reconnect together.
    #[arg(
        long = "max-unopened-connections-per-address",
        env = "LEPUS_MAX_UNOPENED_CONNECTIONS_PER_ADDRESS"
    )]
    max_unopened_connections_per_address: Option<usize>,
    /// Start even if a definitions journal has damaged lines, skipping them (the changes
    /// they held are lost). Without it, such a start is refused with the file and line.
    #[arg(long = "skip-damaged-definitions")]
    skip_damaged_definitions: bool,
}

/// An HTTP listener's address, or none (`off`).
#[derive(Debug, Clone, Copy)]
struct HttpListen(Option<SocketAddr>);

fn parse_http_listen(text: &str) -> Result<HttpListen, String> {
    match text {
        "off" | "none" => Ok(HttpListen(None)),
        _ => text
            .parse()
            .map(|a| HttpListen(Some(a)))
            .map_err(|_| format!("not an address such as 127.0.0.1:15672, or off: {text}")),
    }
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

/// Logs to standard output, filtered by `LEPUS_LOG` (else the configured level). Escape codes
/// only go to a terminal: a log file or a journal gets plain text.
fn init_logging(level: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LEPUS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if json {
        builder.json().init();
    } else {
        builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
            .init();
    }
}

/// Where a flag's value came from, if it was given at all.
fn given(matches: &ArgMatches, id: &str, flag: &str, env: &str) -> Option<String> {
    match matches.value_source(id)? {
        ValueSource::CommandLine => Some(format!("flag --{flag}")),
        ValueSource::EnvVariable => Some(format!("environment {env}")),
        _ => None,
    }
}

/// Notes which settings the command line or the environment gave, for --print-config.
fn note_origins(matches: &ArgMatches, origins: &mut Origins) {
    let mut over = |key: &str, id: &str, flag: &str, env: &str| {
        if let Some(origin) = given(matches, id, flag, env) {
            origins.set(key, origin);
        }
    };
    over("listeners.tcp", "listen", "listen", "LEPUS_LISTEN");
    over("data_dir", "data_dir", "data-dir", "LEPUS_DATA_DIR");
    over(
        "management.tcp",
        "management_listen",
        "management-listen",
        "LEPUS_MANAGEMENT_LISTEN",
    );
    over(
        "prometheus.tcp",
        "prometheus_listen",
        "prometheus-listen",
        "LEPUS_PROMETHEUS_LISTEN",
    );
    over(
        "log.console.formatter",
        "log_format",
        "log-format",
        "LEPUS_LOG_FORMAT",
    );
    over("node_name", "node_name", "node-name", "LEPUS_NODENAME");
    over(
        "max_unopened_connections_per_address",
        "max_unopened_connections_per_address",
        "max-unopened-connections-per-address",
        "LEPUS_MAX_UNOPENED_CONNECTIONS_PER_ADDRESS",
    );
    over("product", "product", "product", "LEPUS_PRODUCT");
    over(
        "product_version",
        "product_version",
        "product-version",
        "LEPUS_PRODUCT_VERSION",
    );
    over(
        "memory_budget",
        "memory_budget_mib",
        "memory-budget-mib",
        "LEPUS_MEMORY_BUDGET_MIB",
    );
    over(
        "topology_budget",
        "topology_budget_mib",
        "topology-budget-mib",
        "LEPUS_TOPOLOGY_BUDGET_MIB",
    );
    over(
        "segment_size",
        "segment_mib",
        "segment-mib",
        "LEPUS_SEGMENT_MIB",
    );
    over(
        "tcp_listen_options.send_timeout",
        "send_timeout_ms",
        "send-timeout-ms",
        "LEPUS_SEND_TIMEOUT_MS",
    );
    over(
        "vm_memory_high_watermark",
        "vm_memory_high_watermark",
        "vm-memory-high-watermark",
        "LEPUS_VM_MEMORY_HIGH_WATERMARK",
    );
    over(
        "disk_free_limit",
        "disk_free_limit",
        "disk-free-limit",
        "LEPUS_DISK_FREE_LIMIT",
    );
}

/// The configuration, where each setting came from, and the file read (with its report).
type Configured = (Config, Origins, Option<(PathBuf, file::Report)>);

/// The configuration: defaults, then the file, then environment and flags over it.
fn configure(args: &Args, matches: &ArgMatches) -> Result<Configured, String> {
    let mut config = Config::default();
    let mut origins = Origins::default();
    let rabbitmq_env = std::env::var_os("RABBITMQ_CONFIG_FILE").map(PathBuf::from);
    let mut read = None;
    if let Some(path) = file::locate(args.config.as_deref(), rabbitmq_env.as_deref()) {
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read the configuration file {}: {e}", path.display()))?;
        let report =
            file::apply(&mut config, &mut origins, &path, &text).map_err(|e| e.to_string())?;
        read = Some((path, report));
    }
    note_origins(matches, &mut origins);
    let a = args;
    if let Some(l) = &a.listen {
        config.listen = l.clone();
    }
    if let Some(d) = &a.data_dir {
        config.data_dir = d.clone();
    }
    if let Some(n) = &a.node_name {
        config.node_name = lepus::config::node_name_from(n)?;
    }
    if let Some(HttpListen(addr)) = a.management_listen {
        config.management_listen = addr;
    }
    if let Some(HttpListen(addr)) = a.prometheus_listen {
        config.prometheus_listen = addr;
    }
    if let Some(f) = a.log_format {
        config.log_json = f == LogFormat::Json;
    }
    if let Some(p) = &a.product {
        config.product = p.clone();
    }
    if let Some(v) = &a.product_version {
        config.version = v.clone();
    }
    let limits = &mut config.limits;
    if let Some(mib) = a.memory_budget_mib {
        limits.memory_budget_bytes = mib.saturating_mul(1 << 20);
    }
    if let Some(mib) = a.topology_budget_mib {
        limits.broker_topology_bytes = mib.saturating_mul(1 << 20);
    }
    if let Some(ms) = a.send_timeout_ms {
        limits.send_timeout_ms = ms.max(1);
    }
    if let Some(w) = a.vm_memory_high_watermark {
        limits.vm_memory_high_watermark = w;
    }
    if let Some(d) = a.disk_free_limit {
        limits.disk_free_limit = d;
    }
    if let Some(n) = a.max_unopened_connections_per_address {
        limits.max_unopened_connections_per_address = n.max(1);
    }
    if let Some(mib) = a.segment_mib {
        limits.segment_bytes = mib.max(1).saturating_mul(1 << 20);
    }
    config.skip_damaged_definitions = a.skip_damaged_definitions;
    Ok((config, origins, read))
}

fn main() -> ExitCode {
    let matches = Args::command().get_matches();
    let args = match Args::from_arg_matches(&matches) {
        Ok(a) => a,
        Err(e) => e.exit(),
    };
    let (config, origins, read) = match configure(&args, &matches) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("lepus: {e}");
            return ExitCode::from(78);
        }
    };
    if args.print_config {
        print!("{}", file::effective(&config, &origins));
        return ExitCode::SUCCESS;
    }
    init_logging(&config.log_level, config.log_json);
    if let Some((path, report)) = &read {
        tracing::info!(path = %path.display(), "read the configuration file");
        for (line, key) in &report.unknown {
            tracing::warn!(path = %path.display(), line, key, "unknown configuration key, ignored");
        }
        for (line, key) in &report.unsupported {
            tracing::warn!(path = %path.display(), line, key, "configuration key not supported by this Lepus yet, ignored");
        }
    }
    // The store's sync thread starts a cycle once the workers have nothing left to run
    // (store::idle): they say when they park.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_park(|| lepus::store::idle::note_worker_busy(false))
        .on_thread_unpark(|| lepus::store::idle::note_worker_busy(true))
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lepus: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let server = match Server::start(config).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot start");
                return ExitCode::FAILURE;
            }
        };
        let list = |addrs: &[SocketAddr]| {
            let names: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
            names.join(", ")
        };
        let tls = match server.tls_addrs() {
            [] => String::new(),
            addrs => format!("; AMQP over TLS on {}", list(addrs)),
        };
        if let Some(addr) = server.management_addr() {
            tracing::info!("management API on http://{addr}/api/");
        }
        if let Some(addr) = server.prometheus_addr() {
            tracing::info!("Prometheus metrics on http://{addr}/metrics");
        }
        tracing::info!(
            "Lepus {} ready, listening for AMQP on {}{tls}",
            env!("CARGO_PKG_VERSION"),
            list(server.local_addrs())
        );
        wait_for_signal().await;
        tracing::info!("shutting down");
        server.shutdown().await;
        ExitCode::SUCCESS
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
