//! The commands on vhosts, policies, queues, connections and definitions, with rabbitmqctl
//! 3.10's messages and exit statuses (observed from it, command by command).

use std::path::Path;

use serde_json::{Value, json};

use crate::{Command, http, percent_encode};

/// What a command printed and how it ended.
pub struct Done {
    /// The banner, unless `-q`, and the result.
    pub stdout: Vec<String>,
    pub stderr: Vec<String>,
    pub status: u8,
}

/// rabbitmqctl's statuses: bad usage or input (64, 65), the node refused (69).
const EX_USAGE: u8 = 64;
const EX_DATAERR: u8 = 65;
const EX_UNAVAILABLE: u8 = 69;

impl Done {
    pub(crate) fn ok(banner: String) -> Done {
        Done {
            stdout: vec![banner],
            stderr: Vec::new(),
            status: 0,
        }
    }

    pub(crate) fn then(mut self, line: impl Into<String>) -> Done {
        self.stdout.push(line.into());
        self
    }

    /// The banner, then `Error:` and why, as rabbitmqctl reports a refusal.
    pub(crate) fn failed(banner: String, why: impl Into<String>, status: u8) -> Done {
        Done {
            stdout: vec![banner],
            stderr: vec!["Error:".into(), why.into()],
            status,
        }
    }
}

/// Runs the command if it is one of this module's.
pub fn run(command: &Command, socket: &Path) -> Option<Done> {
    let done = match command {
        Command::AddVhost {
            vhost,
            description,
            tags,
        } => add_vhost(socket, vhost, description, tags),
        Command::DeleteVhost { vhost } => delete_vhost(socket, vhost),
        Command::SetPolicy {
            vhost,
            priority,
            apply_to,
            name,
            pattern,
            definition,
        } => set_policy(
            socket, vhost, name, pattern, definition, *priority, apply_to,
        ),
        Command::ClearPolicy { vhost, name } => clear_policy(socket, vhost, name),
        Command::DeleteQueue {
            vhost,
            queue,
            if_empty,
            if_unused,
        } => delete_queue(socket, vhost, queue, *if_empty, *if_unused),
        Command::PurgeQueue { vhost, queue } => purge_queue(socket, vhost, queue),
        Command::CloseConnection { connection, reason } => {
            close_connection(socket, connection, reason)
        }
        Command::CloseAllConnections {
            vhost,
            global,
            reason,
        } => close_all(socket, vhost, *global, reason),
        Command::ExportDefinitions { path } => export_definitions(socket, path),
        Command::ImportDefinitions { path } => import_definitions(socket, path),
        Command::AuthenticateUser { username, password } => {
            authenticate(socket, username, password)
        }
        _ => return None,
    };
    Some(done)
}

/// The broker's answer, or why it could not be asked.
pub(crate) fn call(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Result<(u16, Value), Done> {
    http::call(socket, method, path, body, &[]).map_err(|e| Done {
        stdout: Vec::new(),
        stderr: vec![format!("Error: {e}")],
        status: EX_UNAVAILABLE,
    })
}

pub(crate) fn reason(answer: &Value) -> String {
    answer
        .get("reason")
        .and_then(Value::as_str)
        .unwrap_or("failed")
        .to_owned()
}

fn add_vhost(
    socket: &Path,
    vhost: &str,
    description: &Option<String>,
    tags: &Option<String>,
) -> Done {
    let banner = format!("Adding vhost \"{vhost}\" ...");
    let body = json!({"description": description.clone().unwrap_or_default(), "tags": tags.clone().unwrap_or_default()});
    match call(
        socket,
        "PUT",
        &format!("/api/vhosts/{}", percent_encode(vhost)),
        Some(body),
    ) {
        Ok((s, _)) if s < 400 => Done::ok(banner),
        Ok((_, a)) => Done::failed(banner, reason(&a), EX_DATAERR),
        Err(done) => done,
    }
}

fn delete_vhost(socket: &Path, vhost: &str) -> Done {
    let banner = format!("Deleting vhost \"{vhost}\" ...");
    match call(
        socket,
        "DELETE",
        &format!("/api/vhosts/{}", percent_encode(vhost)),
        None,
    ) {
        Ok((s, _)) if s < 400 => Done::ok(banner),
        // rabbitmqctl prints this one on standard output, without `Error:`.
        Ok((404, _)) => Done {
            status: EX_DATAERR,
            ..Done::ok(banner).then(format!("Virtual host '{vhost}' does not exist"))
        },
        Ok((_, a)) => Done::failed(banner, reason(&a), EX_UNAVAILABLE),
        Err(done) => done,
    }
}

fn set_policy(
    socket: &Path,
    vhost: &str,
    name: &str,
    pattern: &str,
    definition: &str,
    priority: i64,
    apply_to: &str,
) -> Done {
    let banner = format!(
        "Setting policy \"{name}\" for pattern \"{pattern}\" to \"{definition}\" with priority \"{priority}\" for vhost \"{vhost}\" ..."
    );
    let Ok(parsed) = serde_json::from_str::<Value>(definition) else {
        return Done::failed(
            banner,
            format!("Validation failed\n\n\"{definition}\" is not valid JSON"),
            EX_DATAERR,
        );
    };
    let body = json!({"pattern": pattern, "definition": parsed, "priority": priority, "apply-to": apply_to});
    let path = format!(
        "/api/policies/{}/{}",
        percent_encode(vhost),
        percent_encode(name)
    );
    match call(socket, "PUT", &path, Some(body)) {
        Ok((s, _)) if s < 400 => Done::ok(banner),
        Ok((_, a)) => Done::failed(
            banner,
            reason(&a).replace("&lt;", "<").replace("&gt;", ">"),
            EX_DATAERR,
        ),
        Err(done) => done,
    }
}

fn clear_policy(socket: &Path, vhost: &str, name: &str) -> Done {
    let banner = format!("Clearing policy \"{name}\" on vhost \"{vhost}\" ...");
    let path = format!(
        "/api/policies/{}/{}",
        percent_encode(vhost),
        percent_encode(name)
    );
    match call(socket, "DELETE", &path, None) {
        Ok((s, _)) if s < 400 => Done::ok(banner),
        Ok((404, _)) => Done::failed(banner, "Parameter does not exist", EX_UNAVAILABLE),
        Ok((_, a)) => Done::failed(banner, reason(&a), EX_UNAVAILABLE),
        Err(done) => done,
    }
}

fn queue_path(vhost: &str, queue: &str) -> String {
    format!(
        "/api/queues/{}/{}",
        percent_encode(vhost),
        percent_encode(queue)
    )
}

fn delete_queue(socket: &Path, vhost: &str, queue: &str, if_empty: bool, if_unused: bool) -> Done {
    let banner = format!("Deleting queue '{queue}' on vhost '{vhost}' ...");
    let ready = match call(socket, "GET", &queue_path(vhost, queue), None) {
        Ok((200, q)) => q["messages_ready"].as_u64().unwrap_or(0),
        Ok(_) => return Done::failed(banner, "Queue not found", EX_USAGE),
        Err(done) => return done,
    };
    let mut path = queue_path(vhost, queue);
    let flags: Vec<&str> = [(if_empty, "if-empty=true"), (if_unused, "if-unused=true")]
        .into_iter()
        .filter_map(|(on, q)| on.then_some(q))
        .collect();
    if !flags.is_empty() {
        path = format!("{path}?{}", flags.join("&"));
    }
    match call(socket, "DELETE", &path, None) {
        Ok((s, _)) if s < 400 => Done::ok(banner).then(format!(
            "Queue was successfully deleted with {ready} ready messages"
        )),
        Ok((404, _)) => Done::failed(banner, "Queue not found", EX_USAGE),
        Ok((_, a)) => Done::failed(banner, reason(&a), EX_UNAVAILABLE),
        Err(done) => done,
    }
}

fn purge_queue(socket: &Path, vhost: &str, queue: &str) -> Done {
    let banner = format!("Purging queue '{queue}' in vhost '{vhost}' ...");
    match call(
        socket,
        "DELETE",
        &format!("{}/contents", queue_path(vhost, queue)),
        None,
    ) {
        Ok((s, _)) if s < 400 => Done::ok(banner),
        Ok((404, _)) => Done::failed(banner, "not_found", EX_UNAVAILABLE),
        Ok((_, a)) => Done::failed(banner, reason(&a), EX_UNAVAILABLE),
        Err(done) => done,
    }
}

fn close_connection(socket: &Path, connection: &str, why: &str) -> Done {
    let banner = format!("Closing connection {connection}, reason: {why}...");
    let path = format!("/api/connections/{}", percent_encode(connection));
    match http::call(socket, "DELETE", &path, None, &[("X-Reason", why)]) {
        Ok((s, _)) if s < 400 => Done::ok(banner),
        Ok((404, _)) => Done::failed(
            banner,
            format!("connection {connection} not found"),
            EX_UNAVAILABLE,
        ),
        Ok((_, a)) => Done::failed(banner, reason(&a), EX_UNAVAILABLE),
        Err(e) => Done::failed(banner, e, EX_UNAVAILABLE),
    }
}

fn close_all(socket: &Path, vhost: &str, global: bool, why: &str) -> Done {
    let banner = match global {
        true => format!("Closing all connections to node lepus, reason: {why}..."),
        false => format!("Closing all connections in vhost {vhost}, reason: {why}..."),
    };
    let conns = match call(socket, "GET", "/api/connections", None) {
        Ok((200, Value::Array(c))) => c,
        Ok((_, a)) => return Done::failed(banner, reason(&a), EX_UNAVAILABLE),
        Err(done) => return done,
    };
    let mut closed = 0;
    for c in conns.iter().filter(|c| global || c["vhost"] == vhost) {
        let Some(name) = c["name"].as_str() else {
            continue;
        };
        let path = format!("/api/connections/{}", percent_encode(name));
        if matches!(http::call(socket, "DELETE", &path, None, &[("X-Reason", why)]), Ok((s, _)) if s < 400)
        {
            closed += 1;
        }
    }
    Done::ok(banner).then(format!("Closed {closed} connections"))
}

fn export_definitions(socket: &Path, path: &str) -> Done {
    let defs = match call(socket, "GET", "/api/definitions", None) {
        Ok((200, d)) => d,
        Ok((_, a)) => return Done::failed(String::new(), reason(&a), EX_UNAVAILABLE),
        Err(done) => return done,
    };
    let text = serde_json::to_string_pretty(&defs).unwrap_or_default();
    if path == "-" {
        return Done::ok(text);
    }
    let banner = format!("Exporting definitions in JSON to a file at \"{path}\" ...");
    match std::fs::write(path, text) {
        Ok(()) => Done::ok(banner),
        Err(e) => Done::failed(banner, format!("cannot write {path}: {e}"), EX_DATAERR),
    }
}

fn import_definitions(socket: &Path, path: &str) -> Done {
    let banner = format!("Importing definitions in JSON from a file at \"{path}\" ...");
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => return Done::failed(banner, format!("cannot read {path}: {e}"), EX_DATAERR),
    };
    let Ok(body) = serde_json::from_str::<Value>(&text) else {
        return Done::failed(banner, format!("{path} is not JSON"), EX_DATAERR);
    };
    match call(socket, "POST", "/api/definitions", Some(body)) {
        Ok((s, _)) if s < 400 => Done::ok(banner).then(
            "Successfully started definition import. This process is asynchronous and can take some time.",
        ),
        Ok((_, a)) => Done::failed(banner, reason(&a), EX_DATAERR),
        Err(done) => done,
    }
}

fn authenticate(socket: &Path, user: &str, password: &str) -> Done {
    let banner = format!("Authenticating user \"{user}\" ...");
    let body = json!({"user": user, "password": password});
    match call(socket, "POST", "/api/lepus/authenticate", Some(body)) {
        Ok((s, _)) if s < 400 => Done::ok(banner).then("Success"),
        Ok(_) => Done::failed(
            banner,
            format!(
                "Error: failed to authenticate user \"{user}\"\nuser '{user}' - invalid credentials"
            ),
            EX_DATAERR,
        ),
        Err(done) => done,
    }
}
