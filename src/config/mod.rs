//! Broker configuration: where to listen, where data lives, who may log in, and a limit on
//! everything that grows. Defaults are RabbitMQ's where RabbitMQ has one.
//!
//! This is the bottom layer: it imports nothing from the rest of the crate, and every layer
//! may read it. Every limit lives in [`Limits`], with its unit in its name.

pub mod file;

use std::net::SocketAddr;
use std::path::PathBuf;

/// RabbitMQ's default `channel_max`, offered in Connection.Tune.
pub const DEFAULT_CHANNEL_MAX: u16 = 2047;
/// RabbitMQ's default `frame_max`, offered in Connection.Tune.
pub const DEFAULT_FRAME_MAX_BYTES: u32 = 131_072;
/// RabbitMQ's default heartbeat, offered in Connection.Tune.
pub const DEFAULT_HEARTBEAT_S: u16 = 60;
/// The smallest frame_max AMQP allows; also the limit before Tune-Ok.
pub const MIN_FRAME_MAX_BYTES: u32 = 4096;
/// The largest `max_message_size` RabbitMQ accepts (512 MiB).
pub const MAX_MESSAGE_SIZE_BYTES: u64 = 512 * 1024 * 1024;
/// RabbitMQ's default `max_message_size` (128 MiB).
pub const DEFAULT_MAX_MESSAGE_SIZE_BYTES: u64 = 128 * 1024 * 1024;

/// The memory high watermark: past it the memory alarm blocks publishers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MemoryWatermark {
    /// A share of the machine's (or the cgroup's) memory; RabbitMQ's default is 0.4.
    Relative(f64),
    /// Bytes.
    Absolute(u64),
}

/// Free disk space below which the disk alarm blocks publishers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DiskFreeLimit {
    /// Bytes; RabbitMQ's default is 50 MB.
    Absolute(u64),
    /// A multiple of the machine's memory (`disk_free_limit.relative`).
    MemRelative(f64),
}

impl MemoryWatermark {
    /// Reads a watermark from the command line: a fraction such as `0.4` is relative to the
    /// machine's memory, a size with a unit (`2GB`, `512MiB`) or a whole number above 1 is
    /// bytes.
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        if let Ok(f) = text.parse::<f64>()
            && f.is_finite()
            && (0.0..=1.0).contains(&f)
        {
            return Some(MemoryWatermark::Relative(f));
        }
        parse_size(text).map(MemoryWatermark::Absolute)
    }
}

impl DiskFreeLimit {
    /// Reads a disk free limit from the command line: a size (`50MB`, `1GiB`, bytes) or
    /// `mem_relative:F`, a multiple of the machine's memory.
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        if let Some(f) = text.strip_prefix("mem_relative:") {
            let f: f64 = f.trim().parse().ok()?;
            return (f.is_finite() && f >= 0.0).then_some(DiskFreeLimit::MemRelative(f));
        }
        parse_size(text).map(DiskFreeLimit::Absolute)
    }
}

/// Reads a size as RabbitMQ's configuration does: a number of bytes, or a number with a unit
/// (`k`/`kiB`, `M`/`MiB`, `G`/`GiB` are powers of 1024; `kB`, `MB`, `GB` powers of 1000).
pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().ok()?;
    let factor: u64 = match unit.trim() {
        "" => 1,
        "k" | "K" | "kiB" | "KiB" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        "kB" | "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return None,
    };
    n.checked_mul(factor)
}

/// Limits on everything a client can make grow.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Channels per connection offered in Connection.Tune.
    pub channel_max: u16,
    /// Largest frame offered in Connection.Tune, overhead included.
    pub frame_max_bytes: u32,
    /// Heartbeat interval offered in Connection.Tune; 0 disables heartbeats.
    pub heartbeat_s: u16,
    /// Largest message body accepted from a publisher.
    pub max_message_size_bytes: u64,
    /// Open client connections; further connections are closed right after accept.
    pub max_connections: usize,
    /// Connections from one address (an IPv6 /64) that have not opened yet (TLS, login,
    /// `connection.open`) at once; further ones from it are closed right after accept.
    /// Idle connections from one address, each kept for the handshake's timeout and
    /// reopened, took every place; a pool opening connections in parallel stays far below.
    pub max_unopened_connections_per_address: usize,
    /// Consumers one channel may hold.
    pub max_consumers_per_channel: usize,
    /// Memory the consumers of one connection may hold together: their records, tags and
    /// the arguments the broker keeps for each.
    pub connection_consumer_bytes: usize,
    /// Memory the consumers of all connections may hold together: a budget per connection
    /// alone let a client opening many connections hold that many times as much.
    pub broker_consumer_bytes: usize,
    /// Queues in the whole broker (RabbitMQ's `cluster_queue_limit`; vhosts may set a lower
    /// `max-queues` of their own).
    pub max_queues: usize,
    /// Exchanges one vhost may hold.
    pub max_exchanges_per_vhost: usize,
    /// Bindings whose source is one exchange.
    pub max_bindings_per_exchange: usize,
    /// Memory the queues, exchanges and bindings of all vhosts may hold together, as charged
    /// (their records, names and arguments, and the durable definitions' copies): the limits
    /// on their numbers multiply to a hundred billion bindings, and a queue's arguments may
    /// hold 4,096 values, half a megabyte kept.
    pub broker_topology_bytes: usize,
    /// Publishes and acknowledgements a transaction may hold before its commit.
    pub max_uncommitted_per_channel: usize,
    /// Publishes one channel may have waiting for their confirms (only a stalled disk makes
    /// them wait long).
    pub max_unconfirmed_per_channel: usize,
    /// Unacknowledged deliveries one channel may hold, whatever its prefetch: a safety net
    /// for consumers with prefetch 0 that never ack.
    pub max_unacked_per_channel: u32,
    /// Seconds a client has to complete the AMQP handshake (RabbitMQ: 10 s).
    pub handshake_timeout_s: u64,
    /// How long output may wait for a client that reads none of it before the connection is
    /// closed (`tcp_listen_options.send_timeout`; RabbitMQ inherits Ranch's 30 s).
    pub send_timeout_ms: u64,
    /// How often the management API samples counters for message rates
    /// (`collect_statistics_interval`; RabbitMQ: 5 s).
    pub stats_interval_ms: u64,
    /// Bytes of deliveries a connection may have queued for its socket before queues stop
    /// sending to it; they resume when the client has read half of it.
    pub connection_outbox_bytes: usize,
    /// Bytes read from a socket in one go.
    pub read_chunk_bytes: usize,
    /// Message bytes all queues together keep in memory; beyond it, queues move the newest
    /// part of their backlogs to disk and read it back as consumers catch up.
    pub memory_budget_bytes: usize,
    /// Size of one segment file of a queue log.
    pub segment_bytes: u64,
    /// Segment files the store keeps open at once; files unused the longest are closed
    /// (when every write to them is synced) and reopened on use. `None`: the descriptors
    /// the connections leave (`recovery::share_descriptors`).
    pub max_open_store_files: Option<usize>,
    /// How long a delivery may stay unacknowledged before its channel is closed, unless the
    /// queue (`x-consumer-timeout`) or the consumer says otherwise; `None` never. RabbitMQ's
    /// default is 30 minutes.
    pub consumer_timeout_ms: Option<u64>,
    /// Past this much resident memory the memory alarm blocks publishers.
    pub vm_memory_high_watermark: MemoryWatermark,
    /// Below this much free disk the disk alarm blocks publishers.
    pub disk_free_limit: DiskFreeLimit,
    /// How often memory and disk are checked for the alarms.
    pub monitor_interval_ms: u64,
    /// How long a quorum queue's at-least-once dead letter waits before it is routed again,
    /// if its exchange was missing, it matched no queue, or a queue refused it. RabbitMQ's
    /// `dead_letter_worker_publisher_confirm_timeout` (advanced.config only): 3 minutes.
    /// A policy change routes them again at once.
    pub dead_letter_retry_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            channel_max: DEFAULT_CHANNEL_MAX,
            frame_max_bytes: DEFAULT_FRAME_MAX_BYTES,
            heartbeat_s: DEFAULT_HEARTBEAT_S,
            max_message_size_bytes: DEFAULT_MAX_MESSAGE_SIZE_BYTES,
            max_connections: 65_536,
            max_unopened_connections_per_address: 256,
            max_consumers_per_channel: 65_536,
            connection_consumer_bytes: 64 * 1024 * 1024,
            broker_consumer_bytes: 1024 * 1024 * 1024,
            max_queues: 1_000_000,
            max_exchanges_per_vhost: 100_000,
            max_bindings_per_exchange: 1_000_000,
            // 4 GiB, or all a 32-bit address space holds.
            broker_topology_bytes: usize::try_from(4u64 << 30).unwrap_or(usize::MAX),
            max_uncommitted_per_channel: 1_000_000,
            max_unconfirmed_per_channel: 1_000_000,
            max_unacked_per_channel: 1_000_000,
            handshake_timeout_s: 10,
            send_timeout_ms: 30_000,
            stats_interval_ms: 5_000,
            connection_outbox_bytes: 1024 * 1024,
            read_chunk_bytes: 64 * 1024,
            memory_budget_bytes: 64 * 1024 * 1024,
            segment_bytes: 8 * 1024 * 1024,
            max_open_store_files: None,
            consumer_timeout_ms: Some(30 * 60 * 1000),
            vm_memory_high_watermark: MemoryWatermark::Relative(0.4),
            disk_free_limit: DiskFreeLimit::Absolute(50_000_000),
            monitor_interval_ms: 1000,
            dead_letter_retry_ms: 180_000,
        }
    }
}

/// What a TLS listener needs: RabbitMQ's `ssl_options`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsOptions {
    /// The server's certificate chain, PEM (`ssl_options.certfile`).
    pub cert_file: PathBuf,
    /// Its private key, PEM (`ssl_options.keyfile`).
    pub key_file: PathBuf,
    /// Certificate authorities client certificates are checked against, PEM
    /// (`ssl_options.cacertfile`).
    pub ca_file: Option<PathBuf>,
    /// Ask clients for a certificate and check it (`ssl_options.verify = verify_peer`).
    pub verify_peer: bool,
    /// Refuse clients without one (`ssl_options.fail_if_no_peer_cert`).
    pub fail_if_no_peer_cert: bool,
}

/// Where SASL EXTERNAL finds the user name in a client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertLogin {
    /// The subject's distinguished name, as RabbitMQ writes it (`CN=bob,O=Example`).
    DistinguishedName,
    /// The subject's common name.
    CommonName,
}

/// A user created on the first start (RabbitMQ's `default_user`/`default_pass`).
#[derive(Debug, Clone)]
pub struct UserConfig {
    pub name: String,
    pub password: String,
}

/// Everything the broker needs to start.
#[derive(Debug, Clone)]
pub struct Config {
    /// Addresses to accept AMQP connections on; port 0 picks a free port.
    pub listen: Vec<SocketAddr>,
    /// Addresses to accept AMQP over TLS on (RabbitMQ's `listeners.ssl.*`, 5671 by
    /// convention); they need `tls`.
    pub tls_listen: Vec<SocketAddr>,
    /// Certificates and client verification for the TLS listeners (`ssl_options.*`).
    pub tls: Option<TlsOptions>,
    /// Where durable state is kept.
    pub data_dir: PathBuf,
    /// Users created on the first start; RabbitMQ's guest/guest by default.
    pub users: Vec<UserConfig>,
    /// Users who may only connect from a loopback address (RabbitMQ's `loopback_users`;
    /// `guest` by default).
    pub loopback_users: Vec<String>,
    /// The SASL mechanisms offered, of those Lepus has (RabbitMQ's `auth_mechanisms`).
    pub auth_mechanisms: Vec<String>,
    /// Where the management HTTP API listens (`management.tcp.ip`/`.port`; RabbitMQ's port
    /// 15672 on every interface by default); `None` serves none.
    pub management_listen: Option<SocketAddr>,
    /// Where Prometheus metrics are served (`prometheus.tcp.ip`/`.port`; 15692).
    pub prometheus_listen: Option<SocketAddr>,
    /// What of a client certificate is the user name under SASL EXTERNAL
    /// (`ssl_cert_login_from`).
    pub ssl_cert_login_from: CertLogin,
    /// A RabbitMQ definitions file imported at every start (`load_definitions`).
    pub load_definitions: Option<PathBuf>,
    /// The log level (`log.console.level`), in `tracing`'s words.
    pub log_level: String,
    /// One JSON object per log line (`log.console.formatter = json`).
    pub log_json: bool,
    /// Virtual hosts created at start-up; every user gets full permissions on them.
    pub vhosts: Vec<String>,
    /// `product` in the server properties. Clients branch on it: kombu (Celery) picks its
    /// `basic.qos` semantics by checking for `RabbitMQ` and the version, so Lepus reports
    /// the RabbitMQ release whose behaviour it implements. `platform` names Lepus.
    pub product: String,
    /// `version` in the server properties.
    pub version: String,
    /// The node's name, as RabbitMQ's `rabbit@host` (its `RABBITMQ_NODENAME`): every list of
    /// the management API and lepusctl names it, and it is the cluster's name until one is
    /// set (`PUT /api/cluster-name`).
    pub node_name: String,
    pub limits: Limits,
    /// Start even if a definitions journal has damaged lines, skipping them (the changes
    /// they held are lost); without it such a start is refused.
    pub skip_damaged_definitions: bool,
}

/// `lepus@` and the machine's host name, as RabbitMQ names a node `rabbit@` and its host.
pub fn default_node_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    format!("lepus@{host}")
}

/// The node name `given` stands for: as RabbitMQ takes `RABBITMQ_NODENAME`, a name without
/// a host gets this machine's (`lepus` is `lepus@host`).
pub fn node_name_from(given: &str) -> Result<String, String> {
    let given = given.trim();
    match given.split_once('@') {
        _ if given.is_empty() => Err("the node name is empty".into()),
        Some((name, host)) if name.is_empty() || host.is_empty() => {
            Err(format!("not a node name such as lepus@host: {given}"))
        }
        Some(_) => Ok(given.to_owned()),
        None => {
            let host = default_node_name();
            let host = host.split_once('@').map_or("localhost", |(_, h)| h);
            Ok(format!("{given}@{host}"))
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            // IPv4 and IPv6, as RabbitMQ's default listener (see `Listener::bind_all`).
            listen: vec![SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 5672))],
            tls_listen: Vec::new(),
            tls: None,
            data_dir: PathBuf::from("lepus-data"),
            users: vec![UserConfig {
                name: "guest".into(),
                password: "guest".into(),
            }],
            loopback_users: vec!["guest".into()],
            auth_mechanisms: vec!["PLAIN".into(), "AMQPLAIN".into()],
            load_definitions: None,
            ssl_cert_login_from: CertLogin::DistinguishedName,
            management_listen: Some(SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 15672))),
            prometheus_listen: Some(SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 15692))),
            log_level: "info".into(),
            log_json: false,
            vhosts: vec!["/".into()],
            product: "RabbitMQ".into(),
            version: "3.10.8".into(),
            node_name: default_node_name(),
            limits: Limits::default(),
            skip_damaged_definitions: false,
        }
    }
}

impl Config {
    /// The user created on the first start, made if there is none.
    pub fn default_user_mut(&mut self) -> &mut UserConfig {
        if self.users.is_empty() {
            self.users.push(UserConfig {
                name: "guest".into(),
                password: "guest".into(),
            });
        }
        &mut self.users[0]
    }

    /// A configuration for tests: one listener on a free loopback port, data in a fresh
    /// temporary directory. The first call in a process removes the directories that test
    /// processes no longer running left behind.
    pub fn for_tests() -> Self {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        static SWEEP: std::sync::Once = std::sync::Once::new();
        SWEEP.call_once(remove_dead_test_dirs);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = std::env::temp_dir().join(format!(
            "lepus-test-{}-{}-{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        ));
        Config {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 0))],
            data_dir: dir,
            // Tests that want HTTP ask for it on an ephemeral port.
            management_listen: None,
            prometheus_listen: None,
            ..Config::default()
        }
    }
}

/// Removes the `lepus-test-<pid>-*` directories of processes that have exited: a test whose
/// broker is dropped cannot know whether another broker will reopen its data, so the
/// directories are collected here, by the next test process, instead. Only where `/proc`
/// says which processes run.
fn remove_dead_test_dirs() {
    let proc = std::path::Path::new("/proc");
    if !proc.join("self").exists() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    // Listed first, removed after: a directory read while entries are removed from it may
    // skip some.
    let dead: Vec<std::path::PathBuf> = entries
        .flatten()
        .filter(|entry| {
            let name = entry.file_name();
            name.to_str()
                .and_then(|n| n.strip_prefix("lepus-test-"))
                .and_then(|rest| rest.split('-').next())
                .and_then(|pid| pid.parse::<u32>().ok())
                .is_some_and(|pid| !proc.join(pid.to_string()).exists())
        })
        .map(|entry| entry.path())
        .collect();
    for dir in dead {
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_directories_of_exited_processes_are_removed() {
        // No process has this id: Linux's pid_max is at most 2^22.
        let dead = std::env::temp_dir().join("lepus-test-999999999-0-1");
        let mine = std::env::temp_dir().join(format!("lepus-test-{}-sweep-1", std::process::id()));
        std::fs::create_dir_all(dead.join("vhosts")).expect("temp dir");
        std::fs::create_dir_all(&mine).expect("temp dir");
        remove_dead_test_dirs();
        assert!(!dead.exists(), "an exited process's directory is removed");
        assert!(mine.exists(), "a running process's directory stays");
        let _ = std::fs::remove_dir_all(&mine);
    }

    #[test]
    fn a_node_name_without_a_host_gets_this_machines_as_rabbitmq_nodename_does() {
        assert_eq!(node_name_from("lepus@db1").as_deref(), Ok("lepus@db1"));
        let host = default_node_name();
        let host = host.split_once('@').map(|(_, h)| h).unwrap_or_default();
        assert_eq!(node_name_from("blue"), Ok(format!("blue@{host}")));
        for bad in ["", "  ", "@db1", "lepus@"] {
            assert!(node_name_from(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn sizes_read_like_rabbitmq_reads_them() {
        assert_eq!(parse_size("50000000"), Some(50_000_000));
        assert_eq!(parse_size("50MB"), Some(50_000_000));
        assert_eq!(parse_size("2GB"), Some(2_000_000_000));
        assert_eq!(parse_size("1GiB"), Some(1 << 30));
        assert_eq!(parse_size("512M"), Some(512 << 20));
        assert_eq!(parse_size("10 kB"), Some(10_000));
        assert_eq!(parse_size("lots"), None);
        assert_eq!(parse_size("5XB"), None);
    }
}
