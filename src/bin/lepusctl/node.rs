//! The node commands: `status`, `await_startup`, `stop_app` and `start_app`, with rabbitmqctl
//! 3.10's messages and exit statuses (observed from it), and the refusal of every other
//! command while the app is stopped.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::objects::Done;
use crate::{Command, http};

/// How often `await_startup` asks.
const POLL: Duration = Duration::from_millis(200);

/// rabbitmqctl's statuses: bad usage, bad input, and a node that cannot be reached or
/// refuses.
const EX_USAGE: u8 = 64;
const EX_DATAERR: u8 = 65;
const EX_UNAVAILABLE: u8 = 69;

/// Runs the command if it is one of this module's.
pub fn run(command: &Command, socket: &Path) -> Option<Done> {
    Some(match command {
        Command::StopApp => switch(socket, false),
        Command::StartApp => switch(socket, true),
        Command::AwaitStartup { timeout } => await_startup(socket, *timeout),
        Command::Status { formatter } => status(socket, formatter.as_deref()),
        Command::SetVmMemoryHighWatermark { value, size } => {
            set_watermark(socket, value, size.as_deref())
        }
        Command::SetDiskFreeLimit { value, fraction } => {
            set_disk_free_limit(socket, value, fraction.as_deref())
        }
        _ => return None,
    })
}

/// Whether the command works while the app is stopped, as in rabbitmqctl.
pub fn works_stopped(command: &Command) -> bool {
    matches!(
        command,
        Command::StopApp | Command::StartApp | Command::AwaitStartup { .. }
    )
}

/// rabbitmqctl's refusal of a command that needs the app, while it is stopped: `None` if the
/// app runs (or the broker cannot be asked: the command itself reports that).
pub fn refused_while_stopped(socket: &Path, argv: &[String]) -> Option<Done> {
    let app = http::request(socket, "GET", "/api/lepus/app", None).ok()?;
    if app["running"].as_bool() != Some(false) {
        return None;
    }
    Some(Done {
        stdout: Vec::new(),
        stderr: vec![
            "Error: this command requires the 'rabbit' app to be running on the target node. \
             Start it with 'rabbitmqctl start_app'."
                .into(),
            "Arguments given:".into(),
            format!("\t{}", argv.join(" ")),
        ],
        status: EX_USAGE,
    })
}

fn switch(socket: &Path, running: bool) -> Done {
    let node = match node_name(socket) {
        Ok(node) => node,
        Err(done) => return done,
    };
    let banner = match running {
        true => format!("Starting node {node} ..."),
        false => format!("Stopping rabbit application on node {node} ..."),
    };
    match http::request(
        socket,
        "PUT",
        "/api/lepus/app",
        Some(json!({"running": running})),
    ) {
        Ok(_) => Done {
            stdout: vec![banner],
            stderr: Vec::new(),
            status: 0,
        },
        Err(e) => unreachable(e),
    }
}

/// The node's name, as the broker gives it.
fn node_name(socket: &Path) -> Result<String, Done> {
    match http::request(socket, "GET", "/api/lepus/app", None) {
        Ok(app) => Ok(app["node"].as_str().unwrap_or("lepus").to_owned()),
        Err(e) => Err(unreachable(e)),
    }
}

/// rabbitmqctl's refusal of a bad argument (exit 65), before it asks the node.
fn bad_argument(why: &str) -> Done {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    Done {
        stdout: Vec::new(),
        stderr: vec![
            format!("Error (argument validation): {why}"),
            "Arguments given:".into(),
            format!("\t{}", argv.join(" ")),
        ],
        status: EX_DATAERR,
    }
}

/// `set_vm_memory_high_watermark <fraction> | absolute <value>`.
fn set_watermark(socket: &Path, value: &str, size: Option<&str>) -> Done {
    let (body, shown) = match (value, size) {
        ("absolute", Some(size)) => (json!({"absolute": size}), format!("{size} bytes")),
        (fraction, None) => match fraction.parse::<f64>() {
            Ok(f) if (0.0..=1.0).contains(&f) => (json!({"relative": f}), fraction.to_owned()),
            _ => {
                return bad_argument(
                    "Bad argument: The threshold should be a fraction between 0.0 and 1.0",
                );
            }
        },
        _ => return bad_argument("Bad argument."),
    };
    set_threshold(
        socket,
        "/api/lepus/vm_memory_high_watermark",
        body,
        |node| format!("Setting memory threshold on {node} to {shown} ..."),
    )
}

/// `set_disk_free_limit <disk_limit> | mem_relative <fraction>`.
fn set_disk_free_limit(socket: &Path, value: &str, fraction: Option<&str>) -> Done {
    let (body, shown) = match (value, fraction) {
        ("mem_relative", Some(f)) => match f.parse::<f64>() {
            Ok(share) => (
                json!({"mem_relative": share}),
                format!("{f} times the total RAM"),
            ),
            Err(_) => return bad_argument("Bad argument."),
        },
        (size, None) if lepus::config::parse_size(size).is_some() => {
            (json!({"absolute": size}), format!("{size} bytes"))
        }
        _ => return bad_argument("Bad argument."),
    };
    set_threshold(socket, "/api/lepus/disk_free_limit", body, |node| {
        format!("Setting disk free limit on {node} to {shown} ...")
    })
}

fn set_threshold(
    socket: &Path,
    path: &str,
    body: Value,
    banner: impl FnOnce(&str) -> String,
) -> Done {
    let node = match node_name(socket) {
        Ok(node) => node,
        Err(done) => return done,
    };
    match http::request(socket, "PUT", path, Some(body)) {
        Ok(_) => Done {
            stdout: vec![banner(&node)],
            stderr: Vec::new(),
            status: 0,
        },
        Err(e) => unreachable(e),
    }
}

/// Waits until the broker answers with its app running (the broker may still be starting:
/// no socket yet is waited for too), for at most `timeout_s`.
fn await_startup(socket: &Path, timeout_s: u64) -> Done {
    let deadline = Instant::now() + Duration::from_secs(timeout_s);
    loop {
        let running = http::request(socket, "GET", "/api/lepus/app", None)
            .map(|app| app["running"].as_bool() == Some(true));
        if running == Ok(true) {
            return Done {
                stdout: Vec::new(),
                stderr: Vec::new(),
                status: 0,
            };
        }
        if Instant::now() >= deadline {
            let why = match running {
                Ok(_) => "rabbit_is_not_running".to_owned(),
                Err(e) => e,
            };
            return Done {
                stdout: Vec::new(),
                stderr: vec!["Error:".into(), why],
                status: EX_UNAVAILABLE,
            };
        }
        std::thread::sleep(POLL);
    }
}

fn status(socket: &Path, formatter: Option<&str>) -> Done {
    let status = match http::request(socket, "GET", "/api/lepus/status", None) {
        Ok(status) => status,
        Err(e) => return unreachable(e),
    };
    let stdout = match formatter {
        Some("json") => vec![status.to_string()],
        _ => status_text(&status),
    };
    Done {
        stdout,
        stderr: Vec::new(),
        status: 0,
    }
}

/// `rabbitmqctl status`'s report: the same sections, headings and line labels (without the
/// bold escape codes, which rabbitmqctl prints even into a pipe), for what Lepus has.
fn status_text(s: &Value) -> Vec<String> {
    let node = s["listeners"][0]["node"]
        .as_str()
        .unwrap_or("lepus")
        .to_owned();
    let sections = [
        (
            "Runtime",
            vec![
                format!("OS PID: {}", text(&s["pid"])),
                format!("OS: {}", text(&s["os"])),
                format!("Uptime (seconds): {}", text(&s["uptime"])),
                format!(
                    "Is under maintenance?: {}",
                    text(&s["is_under_maintenance"])
                ),
                format!("RabbitMQ version: {}", text(&s["rabbitmq_version"])),
                format!("Lepus version: {}", text(&s["lepus_version"])),
                format!("Node name: {node}"),
            ],
        ),
        (
            "Data directory",
            vec![format!(
                "Node data directory: {}",
                text(&s["data_directory"])
            )],
        ),
        ("Alarms", alarm_lines(s)),
        ("Memory", memory_lines(s)),
        (
            "File Descriptors",
            vec![
                format!(
                    "Total: {}, limit: {}",
                    text(&s["file_descriptors"]["total_used"]),
                    text(&s["file_descriptors"]["total_limit"])
                ),
                format!(
                    "Sockets: {}, limit: {}",
                    text(&s["file_descriptors"]["sockets_used"]),
                    text(&s["file_descriptors"]["sockets_limit"])
                ),
            ],
        ),
        (
            "Free Disk Space",
            vec![
                format!(
                    "Low free disk space watermark: {}",
                    gb(&s["disk_free_limit"])
                ),
                format!("Free disk space: {}", gb(&s["disk_free"])),
            ],
        ),
        (
            "Budgets",
            vec![
                format!(
                    "Queues, exchanges and bindings: {} bytes, limit: {}",
                    text(&s["lepus_budgets"]["topology_bytes"]["used"]),
                    text(&s["lepus_budgets"]["topology_bytes"]["limit"])
                ),
                format!(
                    "Consumers: {} bytes, limit: {}",
                    text(&s["lepus_budgets"]["consumer_bytes"]["used"]),
                    text(&s["lepus_budgets"]["consumer_bytes"]["limit"])
                ),
            ],
        ),
        (
            "Totals",
            vec![
                format!(
                    "Connection count: {}",
                    text(&s["totals"]["connection_count"])
                ),
                format!("Queue count: {}", text(&s["totals"]["queue_count"])),
                format!(
                    "Virtual host count: {}",
                    text(&s["totals"]["virtual_host_count"])
                ),
            ],
        ),
        ("Listeners", listener_lines(s)),
    ];
    let mut out = vec![format!("Status of node {node} ...")];
    for (title, lines) in sections {
        out.push(title.to_owned());
        out.push(String::new());
        out.extend(lines);
        out.push(String::new());
    }
    out
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Bytes as rabbitmqctl prints them in `status`.
fn gb(v: &Value) -> String {
    format!("{:.4} gb", v.as_f64().unwrap_or(0.0) / 1e9)
}

fn alarm_lines(s: &Value) -> Vec<String> {
    let alarms: Vec<String> = s["alarms"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|alarm| format!("{} resource limit alarm", text(&alarm["resource_alarm"])))
                .collect()
        })
        .unwrap_or_default();
    if alarms.is_empty() {
        vec!["(none)".into()]
    } else {
        alarms
    }
}

fn memory_lines(s: &Value) -> Vec<String> {
    let setting = match s["vm_memory_high_watermark_setting"].get("relative") {
        Some(share) => format!("{} of available memory", text(share)),
        None => format!(
            "{} bytes",
            text(&s["vm_memory_high_watermark_setting"]["absolute"])
        ),
    };
    vec![
        format!("Total memory used: {}", gb(&s["memory"]["total"]["rss"])),
        "Calculation strategy: rss".into(),
        format!(
            "Memory high watermark setting: {setting}, computed to: {}",
            gb(&s["vm_memory_high_watermark_limit"])
        ),
    ]
}

fn listener_lines(s: &Value) -> Vec<String> {
    s["listeners"]
        .as_array()
        .map(|ls| {
            ls.iter()
                .map(|l| {
                    format!(
                        "Interface: {}, port: {}, protocol: {}, purpose: {}",
                        text(&l["interface"]),
                        text(&l["port"]),
                        text(&l["protocol"]),
                        text(&l["purpose"])
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The broker could not be asked: rabbitmqctl's status for a node it cannot reach.
fn unreachable(e: String) -> Done {
    Done {
        stdout: Vec::new(),
        stderr: vec![format!("Error: {e}")],
        status: EX_UNAVAILABLE,
    }
}
