//! The configuration file as an operator brings it: RabbitMQ's `rabbitmq.conf` keys configure
//! the real binary, flags and environment override it, `--print-config` says where each value
//! came from, an invalid value stops the start with file and line, and `load_definitions`
//! imports a RabbitMQ definitions export (with its password hashes) at start.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use base64::Engine;
use common::within;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use sha2::Digest;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lepus-conf-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn lepus(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_lepus"));
    c.args(args)
        .env_remove("LEPUS_CONFIG_FILE")
        .env_remove("RABBITMQ_CONFIG_FILE")
        .env_remove("LEPUS_SEND_TIMEOUT_MS")
        .env_remove("LEPUS_LISTEN");
    c
}

fn print_config(cmd: &mut Command) -> String {
    let out = cmd.arg("--print-config").output().expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn flags_override_the_environment_which_overrides_the_file() {
    let dir = scratch("precedence");
    let conf = dir.join("rabbitmq.conf");
    std::fs::write(
        &conf,
        "heartbeat = 30\ntcp_listen_options.send_timeout = 1000\n",
    )
    .unwrap();
    let conf_arg = conf.to_str().unwrap();
    let from_file = print_config(&mut lepus(&["--config", conf_arg]));
    let line = |text: &str, key: &str| {
        text.lines()
            .find(|l| l.starts_with(&format!("{key} = ")))
            .unwrap_or_else(|| panic!("{key} in {text}"))
            .to_owned()
    };
    assert_eq!(
        line(&from_file, "tcp_listen_options.send_timeout"),
        format!("tcp_listen_options.send_timeout = 1000    # file {conf_arg}:2")
    );
    assert_eq!(
        line(&from_file, "frame_max"),
        "frame_max = 131072    # default"
    );
    let from_env =
        print_config(lepus(&["--config", conf_arg]).env("LEPUS_SEND_TIMEOUT_MS", "2000"));
    assert_eq!(
        line(&from_env, "tcp_listen_options.send_timeout"),
        "tcp_listen_options.send_timeout = 2000    # environment LEPUS_SEND_TIMEOUT_MS"
    );
    let from_flag = print_config(
        lepus(&["--config", conf_arg, "--send-timeout-ms", "3000"])
            .env("LEPUS_SEND_TIMEOUT_MS", "2000"),
    );
    assert_eq!(
        line(&from_flag, "tcp_listen_options.send_timeout"),
        "tcp_listen_options.send_timeout = 3000    # flag --send-timeout-ms"
    );
    assert!(line(&from_flag, "heartbeat").ends_with(":1"));
    // The topology budget, in MiB as the memory budget is.
    assert_eq!(
        line(&from_file, "broker_topology_bytes"),
        "broker_topology_bytes = 4294967296    # default"
    );
    let topology = print_config(&mut lepus(&["--topology-budget-mib", "12"]));
    assert_eq!(
        line(&topology, "broker_topology_bytes"),
        "broker_topology_bytes = 12582912    # flag --topology-budget-mib"
    );
    // Same as RabbitMQ: RABBITMQ_CONFIG_FILE may leave out the extension.
    let via_rabbitmq_env =
        print_config(lepus(&[]).env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq")));
    assert!(line(&via_rabbitmq_env, "heartbeat").starts_with("heartbeat = 30    # file"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_invalid_value_stops_the_start_naming_file_line_and_expectation() {
    let dir = scratch("invalid");
    let conf = dir.join("rabbitmq.conf");
    std::fs::write(&conf, "# ok\nchannel_max = 64\nframe_max = lots\n").unwrap();
    let out = lepus(&["--config", conf.to_str().unwrap(), "--data-dir"])
        .arg(dir.join("data"))
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "{}:3: invalid value for 'frame_max': expected a number of bytes",
            conf.display()
        )),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A RabbitMQ password hash of `password` with the scheme's digest.
fn rabbitmq_hash<D: Digest>(password: &str) -> String {
    let salt = [0x90, 0x8d, 0xc6, 0x0a];
    let mut h = D::new();
    h.update(salt);
    h.update(password.as_bytes());
    let mut out = salt.to_vec();
    out.extend_from_slice(&h.finalize());
    base64::engine::general_purpose::STANDARD.encode(out)
}

/// Starts the binary; returns it, every log line so far, and the address it listens on.
fn start(args: &[&str], dir: &Path) -> (std::process::Child, mpsc::Receiver<String>, SocketAddr) {
    let mut child = lepus(args)
        .env("LEPUS_MANAGEMENT_LISTEN", "off")
        .env("LEPUS_PROMETHEUS_LISTEN", "off")
        .arg("--data-dir")
        .arg(dir.join("data"))
        .env("LEPUS_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starts");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let (log_tx, log_rx) = mpsc::channel();
    let addr = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the broker reports its address");
        let _ = log_tx.send(line.clone());
        if let Some((_, rest)) = line.split_once("listening for AMQP on ") {
            break rest.trim().parse().expect("an address");
        }
    };
    std::thread::spawn(move || {
        for line in rx {
            let _ = log_tx.send(line);
        }
    });
    (child, log_rx, addr)
}

#[tokio::test]
async fn a_rabbitmq_conf_and_definitions_export_configure_the_broker() {
    let dir = scratch("full");
    let defs = serde_json::json!({
        "rabbit_version": "3.10.8",
        "users": [
            {"name": "svc", "password_hash": rabbitmq_hash::<sha2::Sha512>("svcpass"),
             "hashing_algorithm": "rabbit_password_hashing_sha512", "tags": ["monitoring"], "limits": {}},
            {"name": "old", "password_hash": rabbitmq_hash::<sha2::Sha256>("oldpass"),
             "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": "", "limits": {}}
        ],
        "vhosts": [{"name": "app", "limits": [], "metadata": {"description": ""}}],
        "permissions": [
            {"user": "svc", "vhost": "app", "configure": "^jobs", "write": ".*", "read": ".*"}
        ],
        "topic_permissions": [],
        "parameters": [],
        "global_parameters": [],
        "policies": [
            {"vhost": "app", "name": "ttl", "pattern": "^jobs$", "apply-to": "queues",
             "definition": {"message-ttl": 60000}, "priority": 0}
        ],
        "queues": [
            {"name": "jobs", "vhost": "app", "durable": true, "auto_delete": false,
             "arguments": {"x-queue-type": "classic"}}
        ],
        "exchanges": [
            {"name": "work", "vhost": "app", "type": "direct", "durable": true,
             "auto_delete": false, "internal": false, "arguments": {}}
        ],
        "bindings": [
            {"source": "work", "vhost": "app", "destination": "jobs", "destination_type": "queue",
             "routing_key": "job", "arguments": {}}
        ]
    });
    let defs_path = dir.join("definitions.json");
    std::fs::write(&defs_path, defs.to_string()).unwrap();
    let conf = dir.join("rabbitmq.conf");
    std::fs::write(
        &conf,
        format!(
            "listeners.tcp.local = 127.0.0.1:0\n\
             default_user = admin\n\
             default_pass = s3cret\n\
             heartbeat = 7\n\
             channel_max = 16\n\
             load_definitions = {}\n\
             some_plugin.setting = 1\n",
            defs_path.display()
        ),
    )
    .unwrap();
    let (mut child, log, addr) = start(&["--config", conf.to_str().unwrap()], &dir);
    let lines: Vec<String> = log.try_iter().collect();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("unknown configuration key") && l.contains("some_plugin.setting")),
        "{lines:?}"
    );
    let connect = |user: &str, pass: &str, vhost: &str| {
        let uri = format!("amqp://{user}:{pass}@{addr}/{vhost}");
        async move { within(Connection::connect(&uri, ConnectionProperties::default())).await }
    };
    // Same as RabbitMQ: with definitions to load, no default user is created, neither
    // guest nor the file's default_user: the definitions say who may log in.
    assert!(connect("admin", "s3cret", "%2f").await.is_err());
    assert!(connect("guest", "guest", "%2f").await.is_err());
    // Imported users log in with their imported hashes, SHA-512 and SHA-256.
    let svc = connect("svc", "svcpass", "app").await.expect("svc logs in");
    assert_eq!(svc.configuration().heartbeat(), 7);
    assert_eq!(svc.configuration().channel_max(), 16);
    assert!(connect("svc", "wrong", "app").await.is_err());
    assert!(
        connect("old", "oldpass", "app").await.is_err(),
        "old has no permissions in app"
    );
    let ch = within(svc.create_channel()).await.unwrap();
    let jobs = within(ch.queue_declare(
        "jobs".into(),
        QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    ))
    .await
    .expect("the imported queue exists");
    assert_eq!(jobs.message_count(), 0);
    within(ch.basic_publish(
        "work".into(),
        "job".into(),
        Default::default(),
        b"x",
        Default::default(),
    ))
    .await
    .unwrap();
    let got = common::get_eventually(&ch, "jobs").await;
    assert_eq!(got.delivery.data, b"x", "the imported binding routes");
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
