//! `set_user_limits`, `clear_user_limits` and `list_user_limits`, with rabbitmqctl 3.10.8's
//! banners, messages and exit statuses (observed from it: `conformance/run` compares them in
//! `ctl_user_limits`). They go through `/api/user-limits`.

use std::path::Path;

use serde_json::{Map, Value, json};

use crate::objects::{Done, call, reason};
use crate::{Command, percent_encode};

/// rabbitmqctl's status for every refusal of these commands, bad input included.
const EX_UNAVAILABLE: u8 = 69;

/// The limits a user may have, as `set_user_limits` names them.
const NAMES: [&str; 2] = ["max-connections", "max-channels"];

/// Runs the command if it is one of this module's.
pub fn run(command: &Command, socket: &Path) -> Option<Done> {
    Some(match command {
        Command::SetUserLimits {
            username,
            definition,
        } => set(socket, username, definition),
        Command::ClearUserLimits { username, limit } => clear(socket, username, limit),
        Command::ListUserLimits { user, global } => match global {
            true => list_all(socket),
            false => list_one(socket, user.as_deref().unwrap_or("guest")),
        },
        _ => return None,
    })
}

/// How RabbitMQ prints a value it did not take: a string as an Erlang binary.
fn erlang_term(value: &Value) -> String {
    match value {
        Value::String(s) => format!("<<\"{s}\">>"),
        other => other.to_string(),
    }
}

/// The limits to set, checked as rabbitmqctl checks them, or why not.
fn parse(definition: &str) -> Result<Vec<(String, i64)>, String> {
    let value: Value = serde_json::from_str(definition)
        .map_err(|_| "JSON decoding error. Reason: badarg".to_owned())?;
    let Value::Object(fields) = value else {
        // RabbitMQ names the terms it did not take: a list's items, or the value.
        let terms = match &value {
            Value::Array(items) => items.iter().map(erlang_term).collect::<Vec<_>>(),
            other => vec![erlang_term(other)],
        };
        return Err(format!(
            "Unrecognised terms [{}] in user-limits",
            terms.join(",")
        ));
    };
    let mut limits = Vec::new();
    for (name, value) in fields {
        if !NAMES.contains(&name.as_str()) {
            return Err(format!(
                "Unrecognised terms [{{<<\"{name}\">>,{}}}] in user-limits",
                erlang_term(&value)
            ));
        }
        let Some(n) = value.as_i64() else {
            return Err(format!(
                "{name} should be a number, actually was {}",
                erlang_term(&value)
            ));
        };
        limits.push((name, n));
    }
    Ok(limits)
}

fn limits_path(username: &str) -> String {
    format!("/api/user-limits/{}", percent_encode(username))
}

/// The user's limits as the API has them, or the refusal rabbitmqctl prints for a user that
/// does not exist.
fn limits_of(socket: &Path, banner: &str, username: &str) -> Result<Map<String, Value>, Done> {
    match call(socket, "GET", &limits_path(username), None)? {
        (404, _) => Err(Done::failed(
            banner.to_owned(),
            format!("{{:no_such_user, \"{username}\"}}"),
            EX_UNAVAILABLE,
        )),
        (s, a) if s >= 400 => Err(Done::failed(banner.to_owned(), reason(&a), EX_UNAVAILABLE)),
        (_, Value::Array(items)) => Ok(items
            .first()
            .and_then(|i| i.get("value"))
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default()),
        _ => Ok(Map::new()),
    }
}

fn set(socket: &Path, username: &str, definition: &str) -> Done {
    let banner = format!("Setting user limits to \"{definition}\" for user \"{username}\" ...");
    let limits = match parse(definition) {
        Ok(limits) => limits,
        Err(why) => return Done::failed(banner, why, EX_UNAVAILABLE),
    };
    if let Err(done) = limits_of(socket, &banner, username) {
        return done;
    }
    for (name, value) in limits {
        let path = format!("{}/{name}", limits_path(username));
        match call(socket, "PUT", &path, Some(json!({ "value": value }))) {
            Err(done) => return done,
            Ok((s, a)) if s >= 400 => return Done::failed(banner, reason(&a), EX_UNAVAILABLE),
            Ok(_) => {}
        }
    }
    Done::ok(banner)
}

/// Clears one limit, or all with `all`; a name that is no limit clears nothing.
fn clear(socket: &Path, username: &str, limit: &str) -> Done {
    let banner = match limit {
        "all" => format!("Clearing all limits for user \"{username}\" ..."),
        name => format!("Clearing \"{name}\" limit for user \"{username}\" ..."),
    };
    if let Err(done) = limits_of(socket, &banner, username) {
        return done;
    }
    let names: Vec<&str> = match limit {
        "all" => NAMES.to_vec(),
        name => vec![name],
    };
    for name in names {
        let path = format!("{}/{}", limits_path(username), percent_encode(name));
        match call(socket, "DELETE", &path, None) {
            Err(done) => return done,
            Ok((s, a)) if s >= 400 => return Done::failed(banner, reason(&a), EX_UNAVAILABLE),
            Ok(_) => {}
        }
    }
    Done::ok(banner)
}

/// One user's limits as compact JSON in name order (`{}` for none), as rabbitmqctl prints.
fn list_one(socket: &Path, username: &str) -> Done {
    let banner = format!("Listing limits for user \"{username}\" ...");
    match limits_of(socket, &banner, username) {
        Err(done) => done,
        Ok(limits) => Done::ok(banner).then(Value::Object(sorted(limits)).to_string()),
    }
}

fn sorted(limits: Map<String, Value>) -> Map<String, Value> {
    let mut pairs: Vec<_> = limits.into_iter().collect();
    pairs.sort_by(|a, b| a.0.cmp(&b.0));
    pairs.into_iter().collect()
}

/// Every user with limits, a line each under `user` and `limits`.
fn list_all(socket: &Path) -> Done {
    let banner = "Listing limits for all users ...".to_owned();
    let items = match call(socket, "GET", "/api/user-limits", None) {
        Err(done) => return done,
        Ok((s, a)) if s >= 400 => return Done::failed(banner, reason(&a), EX_UNAVAILABLE),
        Ok((_, Value::Array(items))) => items,
        Ok(_) => Vec::new(),
    };
    let mut done = Done::ok(banner);
    if items.is_empty() {
        return done;
    }
    done = done.then("user\tlimits");
    for item in items {
        let user = item.get("user").and_then(Value::as_str).unwrap_or("");
        let limits = item
            .get("value")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        done = done.then(format!("{user}\t{}", Value::Object(sorted(limits))));
    }
    done
}
