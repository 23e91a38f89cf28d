//! The user and permission commands, with rabbitmqctl 3.10.8's messages and exit statuses
//! (observed from it, command by command: `conformance/run` compares them in `ctl_users`).

use std::path::Path;

use serde_json::{Value, json};

use crate::objects::{Done, call, reason};
use crate::{Command, percent_encode};

/// rabbitmqctl's statuses: bad input (65), no such user (67), no such vhost or the node
/// refused (69), the user exists already (70).
const EX_DATAERR: u8 = 65;
const EX_NOUSER: u8 = 67;
const EX_UNAVAILABLE: u8 = 69;
const EX_SOFTWARE: u8 = 70;

/// What rabbitmqctl adds after a user is created.
const ADD_USER_HINT: &str = "Done. Don't forget to grant the user permissions to some virtual \
                             hosts! See 'rabbitmqctl help set_permissions' to learn more.";

/// Runs the command if it is a user or permission command.
pub fn run(command: &Command, socket: &Path) -> Option<Done> {
    Some(match command {
        Command::AddUser { username, password } => add_user(socket, username, password.clone()),
        Command::DeleteUser { username } => {
            let banner = format!("Deleting user \"{username}\" ...");
            match call(socket, "DELETE", &user_path(username), None) {
                Err(done) => done,
                Ok((404, _)) => no_user_quoted(banner, username),
                Ok((s, a)) if s >= 400 => Done::failed(banner, reason(&a), EX_UNAVAILABLE),
                Ok(_) => Done::ok(banner),
            }
        }
        Command::ChangePassword { username, password } => {
            let banner = format!("Changing password for user \"{username}\" ...");
            update_user(
                socket,
                banner,
                username,
                |user| json!({"password": password, "tags": user["tags"]}),
            )
        }
        Command::SetUserTags { username, tags } => {
            let banner = format!(
                "Setting tags for user \"{username}\" to [{}] ...",
                tags.join(", ")
            );
            update_user(
                socket,
                banner,
                username,
                |user| json!({"password_hash": user["password_hash"], "hashing_algorithm": user["hashing_algorithm"], "tags": tags}),
            )
        }
        other => return permission_command(other, socket),
    })
}

/// The permission commands.
fn permission_command(command: &Command, socket: &Path) -> Option<Done> {
    Some(match command {
        Command::SetPermissions {
            vhost,
            username,
            configure,
            write,
            read,
        } => {
            let banner =
                format!("Setting permissions for user \"{username}\" in vhost \"{vhost}\" ...");
            let body = json!({"configure": configure, "write": write, "read": read});
            grant(
                socket,
                banner,
                vhost,
                username,
                "PUT",
                "permissions",
                None,
                Some(body),
            )
        }
        Command::ClearPermissions { vhost, username } => {
            let banner =
                format!("Clearing permissions for user \"{username}\" in vhost \"{vhost}\" ...");
            grant(
                socket,
                banner,
                vhost,
                username,
                "DELETE",
                "permissions",
                None,
                None,
            )
        }
        Command::SetTopicPermissions {
            vhost,
            username,
            exchange,
            write,
            read,
        } => {
            let banner = format!(
                "Setting topic permissions on \"{exchange}\" for user \"{username}\" in vhost \"{vhost}\" ..."
            );
            let body = json!({"exchange": exchange, "write": write, "read": read});
            grant(
                socket,
                banner,
                vhost,
                username,
                "PUT",
                "topic-permissions",
                None,
                Some(body),
            )
        }
        Command::ClearTopicPermissions {
            vhost,
            username,
            exchange,
        } => {
            let on = exchange
                .as_ref()
                .map(|x| format!(" on \"{x}\""))
                .unwrap_or_default();
            let banner = format!(
                "Clearing topic permissions{on} for user \"{username}\" in vhost \"{vhost}\" ..."
            );
            let exchange = exchange.as_deref();
            grant(
                socket,
                banner,
                vhost,
                username,
                "DELETE",
                "topic-permissions",
                exchange,
                None,
            )
        }
        _ => return None,
    })
}

fn user_path(username: &str) -> String {
    format!("/api/users/{}", percent_encode(username))
}

/// `add_user NAME [PASSWORD]`: without a password argument, rabbitmqctl reads one line from
/// standard input.
fn add_user(socket: &Path, username: &str, password: Option<String>) -> Done {
    let banner = format!("Adding user \"{username}\" ...");
    let password = password.or_else(|| {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).ok()?;
        let line = line.trim_end_matches(['\r', '\n']).to_owned();
        (!line.is_empty()).then_some(line)
    });
    let Some(password) = password else {
        return Done::failed(
            banner,
            "Password is not provided via argument or stdin",
            EX_DATAERR,
        )
        .then("Password: ");
    };
    match call(socket, "GET", &user_path(username), None) {
        Err(done) => return done,
        Ok((200, _)) => {
            return Done::failed(
                banner,
                format!("User \"{username}\" already exists"),
                EX_SOFTWARE,
            );
        }
        Ok(_) => {}
    }
    let body = json!({"password": password, "tags": ""});
    match call(socket, "PUT", &user_path(username), Some(body)) {
        Err(done) => done,
        Ok((s, a)) if s >= 400 => Done::failed(banner, reason(&a), EX_UNAVAILABLE),
        // -q leaves out the banner and the hint alike, as rabbitmqctl's.
        Ok(_) => Done::ok(format!("{banner}\n{ADD_USER_HINT}")),
    }
}

/// Reads the user, and writes what `change` makes of it.
fn update_user(
    socket: &Path,
    banner: String,
    username: &str,
    change: impl FnOnce(&Value) -> Value,
) -> Done {
    let user = match call(socket, "GET", &user_path(username), None) {
        Err(done) => return done,
        Ok((404, _)) => return no_user_quoted(banner, username),
        Ok((s, a)) if s >= 400 => return Done::failed(banner, reason(&a), EX_UNAVAILABLE),
        Ok((_, user)) => user,
    };
    match call(socket, "PUT", &user_path(username), Some(change(&user))) {
        Err(done) => done,
        Ok((s, a)) if s >= 400 => Done::failed(banner, reason(&a), EX_UNAVAILABLE),
        Ok(_) => Done::ok(banner),
    }
}

fn no_user_quoted(banner: String, username: &str) -> Done {
    Done::failed(
        banner,
        format!("User \"{username}\" does not exist"),
        EX_NOUSER,
    )
}

/// Sets or clears a permission (`kind`: `permissions` or `topic-permissions`), after
/// rabbitmqctl's checks and words: the user (67), then the vhost (69), unquoted.
#[allow(clippy::too_many_arguments)]
fn grant(
    socket: &Path,
    banner: String,
    vhost: &str,
    username: &str,
    method: &str,
    kind: &str,
    exchange: Option<&str>,
    body: Option<Value>,
) -> Done {
    let vhost_path = format!("/api/vhosts/{}", percent_encode(vhost));
    for (path, missing, status) in [
        (
            user_path(username),
            format!("User {username} does not exist"),
            EX_NOUSER,
        ),
        (
            vhost_path,
            format!("Virtual host {vhost} does not exist"),
            EX_UNAVAILABLE,
        ),
    ] {
        match call(socket, "GET", &path, None) {
            Err(done) => return done,
            Ok((404, _)) => return Done::failed(banner, missing, status),
            Ok(_) => {}
        }
    }
    let mut path = format!(
        "/api/{kind}/{}/{}",
        percent_encode(vhost),
        percent_encode(username)
    );
    if let Some(x) = exchange {
        path = format!("{path}/{}", percent_encode(x));
    }
    match call(socket, method, &path, body) {
        Err(done) => done,
        // Clearing what was never granted is no error to rabbitmqctl.
        Ok((404, _)) if method == "DELETE" => Done::ok(banner),
        Ok((s, a)) if s >= 400 => Done::failed(banner, reason(&a), EX_UNAVAILABLE),
        Ok(_) => Done::ok(banner),
    }
}
