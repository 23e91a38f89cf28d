//! Listeners and logs as an operator meets them: the default listener serves IPv4 and IPv6
//! clients, and the log is plain text off a terminal (or JSON on request) with one line per
//! connection accepted, opened and closed, naming the peer, user and vhost.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{Broker, within};
use lapin::{Connection, ConnectionProperties};
use lepus::config::Config;

#[tokio::test]
async fn same_as_rabbitmq_the_wildcard_listener_takes_ipv4_and_ipv6_clients() {
    let mut config = Config::for_tests();
    config.listen = vec!["[::]:0".parse().unwrap()];
    let broker = Broker::start_with(config).await;
    let port = broker.addr.port();
    for host in ["127.0.0.1", "[::1]"] {
        if host == "[::1]" && std::net::TcpListener::bind("[::1]:0").is_err() {
            eprintln!("no IPv6 loopback on this machine; IPv4 checked only");
            continue;
        }
        // guest may connect from either loopback address.
        let uri = format!("amqp://guest:guest@{host}:{port}/%2f");
        let conn = within(Connection::connect(&uri, ConnectionProperties::default()))
            .await
            .unwrap_or_else(|e| panic!("connects over {host}: {e}"));
        within(conn.close(200, "bye".into())).await.unwrap();
    }
}

/// Runs the real binary with `args`, connects and disconnects once as guest, and returns
/// every log line up to the connection's close.
fn log_of_one_connection(args: &[&str]) -> Vec<String> {
    let dir =
        std::env::temp_dir().join(format!("lepus-logs-{}-{}", std::process::id(), args.len()));
    let mut child = Command::new(env!("CARGO_BIN_EXE_lepus"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&dir)
        .args(args)
        .env("LEPUS_LOG", "info")
        .env_remove("NO_COLOR")
        .env("LEPUS_MANAGEMENT_LISTEN", "off")
        .env("LEPUS_PROMETHEUS_LISTEN", "off")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the lepus binary starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut lines = Vec::new();
    let wait = Duration::from_secs(30);
    let addr: SocketAddr = loop {
        let line = rx.recv_timeout(wait).expect("the broker logs its address");
        lines.push(line.clone());
        if let Some((_, rest)) = line.split_once("listening for AMQP on ") {
            let addr: String = rest
                .chars()
                .take_while(|c| !c.is_whitespace() && *c != '"' && *c != ',')
                .collect();
            break addr.parse().expect("a socket address");
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let uri = format!("amqp://guest:guest@{addr}/%2f");
        let conn = within(Connection::connect(&uri, ConnectionProperties::default()))
            .await
            .expect("connects");
        within(conn.close(200, "bye".into())).await.unwrap();
    });
    loop {
        let line = rx.recv_timeout(wait).expect("the broker logs the close");
        lines.push(line.clone());
        if line.contains("connection closed") {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    lines
}

#[test]
fn the_log_is_plain_text_off_a_terminal_with_a_line_per_connection_event() {
    let lines = log_of_one_connection(&[]);
    assert!(
        lines.iter().all(|l| !l.contains('\u{1b}')),
        "no escape codes in a piped log: {lines:?}"
    );
    let find = |what: &str| {
        lines
            .iter()
            .find(|l| l.contains(what))
            .unwrap_or_else(|| panic!("a '{what}' line in {lines:?}"))
            .clone()
    };
    assert!(find("accepting AMQP connection").contains("peer=127.0.0.1:"));
    let opened = find("connection opened");
    assert!(
        opened.contains("user=guest") && opened.contains("vhost=/"),
        "{opened}"
    );
    let closed = find("connection closed");
    assert!(
        closed.contains("user=guest") && closed.contains("vhost=/"),
        "{closed}"
    );
}

#[test]
fn the_log_is_one_json_object_per_line_on_request() {
    let lines = log_of_one_connection(&["--log-format", "json"]);
    let events: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let closed = events
        .iter()
        .find(|e| e["fields"]["message"] == "connection closed")
        .expect("a connection closed event");
    assert_eq!(closed["fields"]["user"], "guest");
    assert_eq!(closed["fields"]["vhost"], "/");
    assert_eq!(closed["level"], "INFO");
}
