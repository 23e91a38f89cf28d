//! The configuration file, in RabbitMQ's `rabbitmq.conf` format: one `key = value` per line,
//! `#` starts a comment line, keys are RabbitMQ's. An operator's existing file configures
//! Lepus for the keys Lepus understands; any other key is reported (not fatal, as a key meant
//! for a RabbitMQ plugin is not an error), and a value Lepus cannot read stops the start with
//! the file, line and what was expected.
//!
//! Every value remembers where it came from ([`Origins`]), so `lepus --print-config` can say.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use super::{Config, DiskFreeLimit, MemoryWatermark, parse_size};

/// The AMQP port RabbitMQ listens on when a listener names only an interface.
const DEFAULT_AMQP_PORT: u16 = 5672;
/// The same for AMQP over TLS.
const DEFAULT_AMQPS_PORT: u16 = 5671;

/// A value in the file that cannot be used: where, and what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileError {
    pub path: PathBuf,
    pub line: usize,
    pub key: String,
    pub expected: String,
}

impl std::fmt::Display for FileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}: invalid value for '{}': expected {}",
            self.path.display(),
            self.line,
            self.key,
            self.expected
        )
    }
}

/// Where each setting came from, by its `rabbitmq.conf` key (or flag name where the file has
/// no key for it): `default`, `file PATH:LINE`, `environment NAME` or `flag --NAME`.
#[derive(Debug, Clone, Default)]
pub struct Origins(pub BTreeMap<String, String>);

impl Origins {
    pub fn set(&mut self, key: &str, origin: impl Into<String>) {
        self.0.insert(key.to_owned(), origin.into());
    }

    pub fn of(&self, key: &str) -> &str {
        self.0.get(key).map_or("default", String::as_str)
    }
}

/// What reading the file found besides errors: keys Lepus does not use, and keys it reads but
/// cannot act on yet.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub unknown: Vec<(usize, String)>,
    pub unsupported: Vec<(usize, String)>,
}

/// The file named by `--config`/`LEPUS_CONFIG_FILE`, else by `RABBITMQ_CONFIG_FILE`. As in
/// RabbitMQ, the name may be given without its `.conf` extension.
pub fn locate(explicit: Option<&Path>, rabbitmq_env: Option<&Path>) -> Option<PathBuf> {
    let given = explicit.or(rabbitmq_env)?;
    if given.exists() || given.extension().is_some() {
        return Some(given.to_path_buf());
    }
    let with_ext = given.with_extension("conf");
    Some(if with_ext.exists() {
        with_ext
    } else {
        given.to_path_buf()
    })
}

/// Reads `text` (the contents of `path`) into `config`.
pub fn apply(
    config: &mut Config,
    origins: &mut Origins,
    path: &Path,
    text: &str,
) -> Result<Report, FileError> {
    let mut report = Report::default();
    let mut state = ApplyState::default();
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let error = |key: &str, expected: &str| FileError {
            path: path.to_path_buf(),
            line,
            key: key.to_owned(),
            expected: expected.to_owned(),
        };
        let Some((key, value)) = trimmed.split_once('=') else {
            return Err(error(trimmed, "`key = value`"));
        };
        let (key, value) = (key.trim(), value.trim());
        match set(config, &mut state, key, value) {
            Ok(Known::Used(shown)) => origins.set(shown, format!("file {}:{line}", path.display())),
            Ok(Known::NotYet) => report.unsupported.push((line, key.to_owned())),
            Ok(Known::Unknown) => report.unknown.push((line, key.to_owned())),
            Err(expected) => return Err(error(key, expected)),
        }
    }
    Ok(report)
}

/// Whether a key was used, and under which name it is shown.
enum Known {
    Used(&'static str),
    /// A RabbitMQ key Lepus reads but does not act on yet.
    NotYet,
    Unknown,
}

/// Keys that accumulate (listeners, loopback users, mechanisms) start from empty the first
/// time the file names them, replacing the default.
#[derive(Default)]
struct ApplyState {
    listeners_named: bool,
    loopback_named: bool,
    mechanisms_named: bool,
}

/// What a line sets: `Ok(Some(key shown))` when used, `Ok(None)` when not this group's key.
type Setting = Result<Option<&'static str>, &'static str>;

fn set(
    config: &mut Config,
    state: &mut ApplyState,
    key: &str,
    value: &str,
) -> Result<Known, &'static str> {
    if let Some(shown) = set_access(config, state, key, value)? {
        return Ok(Known::Used(shown));
    }
    if let Some(shown) = set_tls(config, key, value)? {
        return Ok(Known::Used(shown));
    }
    if let Some(shown) = set_limit(&mut config.limits, key, value)? {
        return Ok(Known::Used(shown));
    }
    if let Some(shown) = set_log(config, key, value)? {
        return Ok(Known::Used(shown));
    }
    if let Some(shown) = set_http(config, key, value)? {
        return Ok(Known::Used(shown));
    }
    let not_yet = key.starts_with("ssl_options.");
    Ok(if not_yet {
        Known::NotYet
    } else {
        Known::Unknown
    })
}

/// Listeners, users, vhost, mechanisms, definitions.
fn set_access(config: &mut Config, state: &mut ApplyState, key: &str, value: &str) -> Setting {
    let used = match key {
        "listeners.tcp" if value == "none" => {
            config.listen.clear();
            state.listeners_named = true;
            "listeners.tcp"
        }
        k if k.starts_with("listeners.tcp.") => {
            if !state.listeners_named {
                config.listen.clear();
                state.listeners_named = true;
            }
            config.listen.push(parse_listener(value)?);
            "listeners.tcp"
        }
        "loopback_users" if value == "none" => {
            config.loopback_users.clear();
            state.loopback_named = true;
            "loopback_users"
        }
        k if k.starts_with("loopback_users.") => {
            if !state.loopback_named {
                config.loopback_users.clear();
                state.loopback_named = true;
            }
            let user = &k["loopback_users.".len()..];
            if parse_bool(value)? {
                config.loopback_users.push(user.to_owned());
            }
            "loopback_users"
        }
        k if k.starts_with("auth_mechanisms.") => {
            if !state.mechanisms_named {
                config.auth_mechanisms.clear();
                state.mechanisms_named = true;
            }
            match value {
                "PLAIN" | "AMQPLAIN" | "EXTERNAL" => config.auth_mechanisms.push(value.to_owned()),
                _ => return Err("PLAIN, AMQPLAIN or EXTERNAL"),
            }
            "auth_mechanisms"
        }
        "default_user" => {
            config.default_user_mut().name = nonempty(value)?;
            "default_user"
        }
        "default_pass" => {
            config.default_user_mut().password = value.to_owned();
            "default_pass"
        }
        "default_vhost" => {
            let vhost = nonempty(value)?;
            // No client could open it: connection.open names it in a short string (of at
            // most 255 bytes; the protocol layer's constant sits above this one).
            if vhost.len() > 255 {
                return Err("a name of at most 255 bytes");
            }
            match config.vhosts.first_mut() {
                Some(v) => *v = vhost,
                None => config.vhosts.push(vhost),
            }
            "default_vhost"
        }
        "load_definitions" => {
            config.load_definitions = Some(PathBuf::from(nonempty(value)?));
            "load_definitions"
        }
        _ => return Ok(None),
    };
    Ok(Some(used))
}

/// TLS listeners and options, and the user name a client certificate gives.
fn set_tls(config: &mut Config, key: &str, value: &str) -> Setting {
    let used = match key {
        "listeners.ssl" if value == "none" => {
            config.tls_listen.clear();
            "listeners.ssl"
        }
        k if k.starts_with("listeners.ssl.") => {
            config
                .tls_listen
                .push(parse_listener_on(value, DEFAULT_AMQPS_PORT)?);
            "listeners.ssl"
        }
        "ssl_cert_login_from" => {
            config.ssl_cert_login_from = match value {
                "distinguished_name" => super::CertLogin::DistinguishedName,
                "common_name" => super::CertLogin::CommonName,
                _ => return Err("distinguished_name or common_name"),
            };
            "ssl_cert_login_from"
        }
        "ssl_options.certfile" => {
            config.tls.get_or_insert_default().cert_file = PathBuf::from(nonempty(value)?);
            "ssl_options.certfile"
        }
        "ssl_options.keyfile" => {
            config.tls.get_or_insert_default().key_file = PathBuf::from(nonempty(value)?);
            "ssl_options.keyfile"
        }
        "ssl_options.cacertfile" => {
            config.tls.get_or_insert_default().ca_file = Some(PathBuf::from(nonempty(value)?));
            "ssl_options.cacertfile"
        }
        "ssl_options.verify" => {
            config.tls.get_or_insert_default().verify_peer = match value {
                "verify_peer" => true,
                "verify_none" => false,
                _ => return Err("verify_peer or verify_none"),
            };
            "ssl_options.verify"
        }
        "ssl_options.fail_if_no_peer_cert" => {
            config.tls.get_or_insert_default().fail_if_no_peer_cert = parse_bool(value)?;
            "ssl_options.fail_if_no_peer_cert"
        }
        _ => return Ok(None),
    };
    Ok(Some(used))
}

/// The management and Prometheus listeners' addresses (RabbitMQ's ports 15672 and 15692 on
/// every interface unless the file says otherwise).
fn set_http(config: &mut Config, key: &str, value: &str) -> Setting {
    let (slot, default_port, shown) = match key {
        "management.tcp.port" | "management.tcp.ip" => {
            (&mut config.management_listen, 15672, "management.tcp")
        }
        "prometheus.tcp.port" | "prometheus.tcp.ip" => {
            (&mut config.prometheus_listen, 15692, "prometheus.tcp")
        }
        _ => return Ok(None),
    };
    let addr = slot.get_or_insert(SocketAddr::from((Ipv6Addr::UNSPECIFIED, default_port)));
    if key.ends_with(".port") {
        addr.set_port(value.parse().map_err(|_| "a port number")?);
    } else {
        addr.set_ip(value.parse().map_err(|_| "an IP address")?);
    }
    Ok(Some(shown))
}

/// The limits and alarm thresholds.
fn set_limit(limits: &mut super::Limits, key: &str, value: &str) -> Setting {
    let used = match key {
        "vm_memory_high_watermark.relative" => {
            let f: f64 = value.parse().map_err(|_| "a fraction such as 0.4")?;
            if !(0.0..=1.0).contains(&f) {
                return Err("a fraction between 0 and 1");
            }
            limits.vm_memory_high_watermark = MemoryWatermark::Relative(f);
            "vm_memory_high_watermark"
        }
        "vm_memory_high_watermark.absolute" => {
            let bytes = parse_size(value).ok_or("a size such as 2GB or 1073741824")?;
            limits.vm_memory_high_watermark = MemoryWatermark::Absolute(bytes);
            "vm_memory_high_watermark"
        }
        "disk_free_limit.absolute" => {
            let bytes = parse_size(value).ok_or("a size such as 50MB or 1GB")?;
            limits.disk_free_limit = DiskFreeLimit::Absolute(bytes);
            "disk_free_limit"
        }
        "disk_free_limit.relative" => {
            let f: f64 = value
                .parse()
                .map_err(|_| "a multiple of memory such as 1.0")?;
            if !f.is_finite() || f < 0.0 {
                return Err("a non-negative multiple of memory such as 1.0");
            }
            limits.disk_free_limit = DiskFreeLimit::MemRelative(f);
            "disk_free_limit"
        }
        "channel_max" => {
            let n: u16 = value.parse().map_err(|_| "a number from 1 to 65535")?;
            // RabbitMQ reads 0 as "no limit"; the protocol's largest is 65535.
            limits.channel_max = if n == 0 { u16::MAX } else { n };
            "channel_max"
        }
        "frame_max" => {
            let n: u32 = value.parse().map_err(|_| "a number of bytes")?;
            if n < super::MIN_FRAME_MAX_BYTES {
                return Err("at least 4096 bytes");
            }
            limits.frame_max_bytes = n;
            "frame_max"
        }
        "heartbeat" => {
            limits.heartbeat_s = value.parse().map_err(|_| "seconds (0 disables)")?;
            "heartbeat"
        }
        "max_message_size" => {
            let n: u64 = value.parse().map_err(|_| "a number of bytes")?;
            if n == 0 || n > super::MAX_MESSAGE_SIZE_BYTES {
                return Err("a number of bytes from 1 to 536870912");
            }
            limits.max_message_size_bytes = n;
            "max_message_size"
        }
        "consumer_timeout" => {
            let ms: u64 = value.parse().map_err(|_| "milliseconds")?;
            limits.consumer_timeout_ms = Some(ms);
            "consumer_timeout"
        }
        "tcp_listen_options.send_timeout" => {
            let ms: u64 = value.parse().map_err(|_| "milliseconds")?;
            limits.send_timeout_ms = ms.max(1);
            "tcp_listen_options.send_timeout"
        }
        "collect_statistics_interval" => {
            let ms: u64 = value.parse().map_err(|_| "milliseconds")?;
            limits.stats_interval_ms = ms.max(100);
            "collect_statistics_interval"
        }
        _ => return Ok(None),
    };
    Ok(Some(used))
}

/// Logging.
fn set_log(config: &mut Config, key: &str, value: &str) -> Setting {
    let used = match key {
        "log.console.level" => {
            config.log_level = match value {
                "debug" | "info" | "error" => value.to_owned(),
                "warning" | "warn" => "warn".to_owned(),
                "critical" => "error".to_owned(),
                "none" => "off".to_owned(),
                _ => return Err("debug, info, warning, error, critical or none"),
            };
            "log.console.level"
        }
        "log.console.formatter" => {
            config.log_json = match value {
                "json" => true,
                "plaintext" => false,
                _ => return Err("plaintext or json"),
            };
            "log.console.formatter"
        }
        "log.console" => {
            parse_bool(value)?;
            "log.console"
        }
        _ => return Ok(None),
    };
    Ok(Some(used))
}

/// The effective configuration as `rabbitmq.conf` lines, each followed by where it came from
/// (`lepus --print-config`). The default user's password is not shown.
pub fn effective(config: &Config, origins: &Origins) -> String {
    let l = &config.limits;
    let mut lines: Vec<(String, String, &str)> = Vec::new();
    let mut add = |key: &str, value: String, origin_key: &str| {
        lines.push((key.to_owned(), value, origins.of(origin_key)));
    };
    for (i, addr) in config.listen.iter().enumerate() {
        add(
            &format!("listeners.tcp.{}", i + 1),
            addr.to_string(),
            "listeners.tcp",
        );
    }
    if config.listen.is_empty() {
        add("listeners.tcp", "none".into(), "listeners.tcp");
    }
    for (i, addr) in config.tls_listen.iter().enumerate() {
        add(
            &format!("listeners.ssl.{}", i + 1),
            addr.to_string(),
            "listeners.ssl",
        );
    }
    if let Some(t) = &config.tls {
        tls_lines(t, &mut add);
    }
    add(
        "data_dir",
        config.data_dir.display().to_string(),
        "data_dir",
    );
    if let Some(addr) = config.management_listen {
        add("management.tcp", addr.to_string(), "management.tcp");
    }
    if let Some(addr) = config.prometheus_listen {
        add("prometheus.tcp", addr.to_string(), "prometheus.tcp");
    }
    if let Some(u) = config.users.first() {
        add("default_user", u.name.clone(), "default_user");
        add("default_pass", "********".into(), "default_pass");
    }
    if let Some(v) = config.vhosts.first() {
        add("default_vhost", v.clone(), "default_vhost");
    }
    for u in &config.loopback_users {
        add(
            &format!("loopback_users.{u}"),
            "true".into(),
            "loopback_users",
        );
    }
    for (i, m) in config.auth_mechanisms.iter().enumerate() {
        add(
            &format!("auth_mechanisms.{}", i + 1),
            m.clone(),
            "auth_mechanisms",
        );
    }
    if let Some(p) = &config.load_definitions {
        add(
            "load_definitions",
            p.display().to_string(),
            "load_definitions",
        );
    }
    limit_lines(l, &mut add);
    add(
        "log.console.level",
        config.log_level.clone(),
        "log.console.level",
    );
    let formatter = if config.log_json { "json" } else { "plaintext" };
    add(
        "log.console.formatter",
        formatter.into(),
        "log.console.formatter",
    );
    add("node_name", config.node_name.clone(), "node_name");
    add("product", config.product.clone(), "product");
    add("product_version", config.version.clone(), "product_version");
    let mut out =
        String::from("# The effective configuration; after each value, where it came from.\n");
    for (key, value, origin) in lines {
        out.push_str(&format!("{key} = {value}    # {origin}\n"));
    }
    out
}

/// The TLS options' lines of [`effective`].
fn tls_lines(t: &super::TlsOptions, add: &mut impl FnMut(&str, String, &str)) {
    let file = |p: &std::path::Path| p.display().to_string();
    add(
        "ssl_options.certfile",
        file(&t.cert_file),
        "ssl_options.certfile",
    );
    add(
        "ssl_options.keyfile",
        file(&t.key_file),
        "ssl_options.keyfile",
    );
    if let Some(ca) = &t.ca_file {
        add("ssl_options.cacertfile", file(ca), "ssl_options.cacertfile");
    }
    let verify = if t.verify_peer {
        "verify_peer"
    } else {
        "verify_none"
    };
    add("ssl_options.verify", verify.into(), "ssl_options.verify");
    add(
        "ssl_options.fail_if_no_peer_cert",
        t.fail_if_no_peer_cert.to_string(),
        "ssl_options.fail_if_no_peer_cert",
    );
}

/// The limits' lines of [`effective`].
fn limit_lines(l: &super::Limits, add: &mut impl FnMut(&str, String, &str)) {
    let (key, value) = match l.vm_memory_high_watermark {
        MemoryWatermark::Relative(f) => ("vm_memory_high_watermark.relative", f.to_string()),
        MemoryWatermark::Absolute(b) => ("vm_memory_high_watermark.absolute", b.to_string()),
    };
    add(key, value, "vm_memory_high_watermark");
    let (key, value) = match l.disk_free_limit {
        DiskFreeLimit::Absolute(b) => ("disk_free_limit.absolute", b.to_string()),
        DiskFreeLimit::MemRelative(f) => ("disk_free_limit.relative", f.to_string()),
    };
    add(key, value, "disk_free_limit");
    add("channel_max", l.channel_max.to_string(), "channel_max");
    add("frame_max", l.frame_max_bytes.to_string(), "frame_max");
    add("heartbeat", l.heartbeat_s.to_string(), "heartbeat");
    add(
        "max_message_size",
        l.max_message_size_bytes.to_string(),
        "max_message_size",
    );
    if let Some(ms) = l.consumer_timeout_ms {
        add("consumer_timeout", ms.to_string(), "consumer_timeout");
    }
    add(
        "tcp_listen_options.send_timeout",
        l.send_timeout_ms.to_string(),
        "tcp_listen_options.send_timeout",
    );
    add(
        "collect_statistics_interval",
        l.stats_interval_ms.to_string(),
        "collect_statistics_interval",
    );
    add(
        "memory_budget_bytes",
        l.memory_budget_bytes.to_string(),
        "memory_budget",
    );
    add(
        "broker_topology_bytes",
        l.broker_topology_bytes.to_string(),
        "topology_budget",
    );
    add("segment_bytes", l.segment_bytes.to_string(), "segment_size");
    add(
        "max_unopened_connections_per_address",
        l.max_unopened_connections_per_address.to_string(),
        "max_unopened_connections_per_address",
    );
}

fn nonempty(value: &str) -> Result<String, &'static str> {
    if value.is_empty() {
        return Err("a non-empty value");
    }
    Ok(value.to_owned())
}

fn parse_bool(value: &str) -> Result<bool, &'static str> {
    match value {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err("true or false"),
    }
}

/// A listener as RabbitMQ writes one: a port (on every interface, IPv4 and IPv6), or an
/// address and port (`127.0.0.1:5672`, `::1:5672`, `[::1]:5672`), or an address alone.
pub fn parse_listener(value: &str) -> Result<SocketAddr, &'static str> {
    parse_listener_on(value, DEFAULT_AMQP_PORT)
}

/// [`parse_listener`] with another default port.
fn parse_listener_on(value: &str, default_port: u16) -> Result<SocketAddr, &'static str> {
    const EXPECTED: &str = "a port, or an address and port such as 127.0.0.1:5672 or [::1]:5672";
    if let Ok(port) = value.parse::<u16>() {
        return Ok(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)));
    }
    if let Ok(addr) = value.parse::<SocketAddr>() {
        return Ok(addr);
    }
    // RabbitMQ writes IPv6 without brackets (`::1:5672`): the part after the last colon is
    // the port, even where the whole would also read as an address.
    if let Some((ip, port)) = value.rsplit_once(':')
        && let (Ok(ip), Ok(port)) = (ip.parse::<IpAddr>(), port.parse::<u16>())
    {
        return Ok(SocketAddr::new(ip, port));
    }
    let ip: IpAddr = value.parse().map_err(|_| EXPECTED)?;
    Ok(SocketAddr::new(ip, default_port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Result<(Config, Origins, Report), FileError> {
        let mut config = Config::default();
        let mut origins = Origins::default();
        let report = apply(&mut config, &mut origins, Path::new("/etc/r.conf"), text)?;
        Ok((config, origins, report))
    }

    #[test]
    fn reads_rabbitmq_keys() {
        let (config, origins, report) = read(
            "# a comment\n\
             listeners.tcp.default = 5673\n\
             listeners.tcp.local = 127.0.0.1:5674\n\
             listeners.tcp.v6 = ::1:5675\n\
             default_user = admin\n\
             default_pass = s3cret\n\
             default_vhost = prod\n\
             loopback_users.guest = false\n\
             vm_memory_high_watermark.absolute = 2GB\n\
             disk_free_limit.absolute = 1GB\n\
             channel_max = 64\n\
             frame_max = 8192\n\
             heartbeat = 30\n\
             max_message_size = 1048576\n\
             consumer_timeout = 900000\n\
             tcp_listen_options.send_timeout = 15000\n\
             log.console.level = warning\n\
             auth_mechanisms.1 = PLAIN\n\
             load_definitions = /etc/defs.json\n\
             management.tcp.port = 15673\n\
             cluster_formation.peer_discovery_backend = classic_config\n",
        )
        .unwrap();
        assert_eq!(
            config.listen,
            vec![
                "[::]:5673".parse().unwrap(),
                "127.0.0.1:5674".parse().unwrap(),
                "[::1]:5675".parse().unwrap()
            ]
        );
        assert_eq!(config.users[0].name, "admin");
        assert_eq!(config.users[0].password, "s3cret");
        assert_eq!(config.vhosts, vec!["prod".to_string()]);
        assert!(config.loopback_users.is_empty());
        assert_eq!(
            config.limits.vm_memory_high_watermark,
            MemoryWatermark::Absolute(2_000_000_000)
        );
        assert_eq!(
            config.limits.disk_free_limit,
            DiskFreeLimit::Absolute(1_000_000_000)
        );
        assert_eq!(config.limits.channel_max, 64);
        assert_eq!(config.limits.frame_max_bytes, 8192);
        assert_eq!(config.limits.heartbeat_s, 30);
        assert_eq!(config.limits.max_message_size_bytes, 1 << 20);
        assert_eq!(config.limits.consumer_timeout_ms, Some(900_000));
        assert_eq!(config.limits.send_timeout_ms, 15_000);
        assert_eq!(config.log_level, "warn");
        assert_eq!(config.auth_mechanisms, vec!["PLAIN".to_string()]);
        assert_eq!(
            config.load_definitions,
            Some(PathBuf::from("/etc/defs.json"))
        );
        assert_eq!(origins.of("heartbeat"), "file /etc/r.conf:13");
        assert_eq!(origins.of("data_dir"), "default");
        assert!(report.unsupported.is_empty());
        assert_eq!(
            config.management_listen,
            Some("[::]:15673".parse().unwrap())
        );
        assert_eq!(
            report.unknown,
            vec![(21, "cluster_formation.peer_discovery_backend".into())]
        );
    }

    #[test]
    fn reads_tls_listeners_and_options() {
        let (config, _, report) = read(
            "listeners.ssl.default = 5671\n\
             ssl_options.cacertfile = /etc/ca.pem\n\
             ssl_options.certfile = /etc/server.pem\n\
             ssl_options.keyfile = /etc/server.key\n\
             ssl_options.verify = verify_peer\n\
             ssl_options.fail_if_no_peer_cert = true\n\
             ssl_options.versions.1 = tlsv1.3\n",
        )
        .unwrap();
        assert_eq!(config.tls_listen, vec!["[::]:5671".parse().unwrap()]);
        let tls = config.tls.expect("ssl_options");
        assert_eq!(tls.ca_file, Some(PathBuf::from("/etc/ca.pem")));
        assert!(tls.verify_peer && tls.fail_if_no_peer_cert);
        assert_eq!(
            report.unsupported,
            vec![(7, "ssl_options.versions.1".into())]
        );
        assert!(read("ssl_options.verify = maybe").is_err());
    }

    #[test]
    fn the_effective_configuration_says_where_each_value_came_from() {
        let (config, origins, _) = read("heartbeat = 30\ndefault_pass = hunter2\n").unwrap();
        let text = effective(&config, &origins);
        assert!(
            text.contains("heartbeat = 30    # file /etc/r.conf:1\n"),
            "{text}"
        );
        assert!(text.contains("frame_max = 131072    # default\n"), "{text}");
        assert!(
            text.contains("listeners.tcp.1 = [::]:5672    # default\n"),
            "{text}"
        );
        assert!(!text.contains("hunter2"), "{text}");
    }

    #[test]
    fn an_invalid_value_names_the_file_line_and_expectation() {
        let err = read("heartbeat = 30\nframe_max = lots\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "/etc/r.conf:2: invalid value for 'frame_max': expected a number of bytes"
        );
        let err = read("vm_memory_high_watermark.relative = 1.5").unwrap_err();
        assert_eq!(err.line, 1);
        assert!(read("just words").is_err());
        assert!(read("listeners.tcp.default = localhost:x").is_err());
        assert!(read("auth_mechanisms.1 = KERBEROS").is_err());
        // No client could open a vhost whose name does not fit a short string.
        assert!(read(&format!("default_vhost = {}", "v".repeat(256))).is_err());
        assert!(read(&format!("default_vhost = {}", "v".repeat(255))).is_ok());
    }

    #[test]
    fn the_file_may_be_named_without_its_extension() {
        let dir = std::env::temp_dir().join(format!("lepus-conf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("rabbitmq.conf"), "").unwrap();
        assert_eq!(
            locate(None, Some(&dir.join("rabbitmq"))),
            Some(dir.join("rabbitmq.conf"))
        );
        assert_eq!(
            locate(
                Some(Path::new("/x/lepus.conf")),
                Some(&dir.join("rabbitmq"))
            ),
            Some(PathBuf::from("/x/lepus.conf"))
        );
        assert_eq!(locate(None, None), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
