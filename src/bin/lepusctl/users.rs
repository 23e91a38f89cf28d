//! The user and permission commands, with rabbitmqctl's messages.

use std::path::Path;

use serde_json::json;

use crate::{Command, http, percent_encode, put};

/// Runs a user or permission command; other commands are not this module's.
pub fn run(command: &Command, socket: &Path) -> Result<String, String> {
    let user_path = |u: &str| format!("/api/users/{}", percent_encode(u));
    let perm_path = |kind: &str, v: &str, u: &str| {
        format!("/api/{kind}/{}/{}", percent_encode(v), percent_encode(u))
    };
    match command {
        Command::AddUser { username, password } => {
            if http::request(socket, "GET", &user_path(username), None).is_ok() {
                return Err(format!("User \"{username}\" already exists"));
            }
            put(
                socket,
                &user_path(username),
                json!({"password": password, "tags": ""}),
            )?;
            Ok(format!("Adding user \"{username}\" ..."))
        }
        Command::DeleteUser { username } => {
            http::request(socket, "DELETE", &user_path(username), None)?;
            Ok(format!("Deleting user \"{username}\" ..."))
        }
        Command::ChangePassword { username, password } => {
            let user = http::request(socket, "GET", &user_path(username), None)
                .map_err(|_| format!("User \"{username}\" does not exist"))?;
            let tags = user.get("tags").cloned().unwrap_or(json!([]));
            put(
                socket,
                &user_path(username),
                json!({"password": password, "tags": tags}),
            )?;
            Ok(format!("Changing password for user \"{username}\" ..."))
        }
        Command::SetUserTags { username, tags } => {
            http::request(socket, "GET", &user_path(username), None)
                .map_err(|_| format!("User \"{username}\" does not exist"))?;
            put(socket, &user_path(username), json!({"tags": tags}))?;
            Ok(format!(
                "Setting tags for user \"{username}\" to [{}] ...",
                tags.join(", ")
            ))
        }
        Command::SetPermissions {
            vhost,
            username,
            configure,
            write,
            read,
        } => {
            let body = json!({"configure": configure, "write": write, "read": read});
            put(socket, &perm_path("permissions", vhost, username), body)?;
            Ok(format!(
                "Setting permissions for user \"{username}\" in vhost \"{vhost}\" ..."
            ))
        }
        Command::ClearPermissions { vhost, username } => {
            let path = perm_path("permissions", vhost, username);
            http::request(socket, "DELETE", &path, None)?;
            Ok(format!(
                "Clearing permissions for user \"{username}\" in vhost \"{vhost}\" ..."
            ))
        }
        Command::SetTopicPermissions {
            vhost,
            username,
            exchange,
            write,
            read,
        } => {
            let body = json!({"exchange": exchange, "write": write, "read": read});
            put(
                socket,
                &perm_path("topic-permissions", vhost, username),
                body,
            )?;
            Ok(format!(
                "Setting topic permissions on \"{exchange}\" for user \"{username}\" in vhost \"{vhost}\" ..."
            ))
        }
        Command::ClearTopicPermissions {
            vhost,
            username,
            exchange,
        } => {
            let mut path = perm_path("topic-permissions", vhost, username);
            if let Some(x) = exchange {
                path = format!("{path}/{}", percent_encode(x));
            }
            http::request(socket, "DELETE", &path, None)?;
            Ok(format!(
                "Clearing topic permissions for user \"{username}\" in vhost \"{vhost}\" ..."
            ))
        }
        _ => Err("not a user or permission command".into()),
    }
}
