//! `lepusctl`: Lepus's `rabbitmqctl`, for operators and for the scripts and test suites that
//! shell out to `rabbitmqctl`. It talks to a running broker through its admin socket (HTTP on
//! a Unix socket in the data directory; the file's permissions are the authorisation).

mod http;
mod list;
mod node;
mod objects;
mod user_limits;
mod users;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use serde_json::Value;

/// Controls a running Lepus broker (commands and flags as rabbitmqctl's).
#[derive(Parser, Debug)]
#[command(name = "lepusctl", version, about)]
struct Args {
    /// The broker's data directory, where its admin socket is.
    #[arg(
        long = "data-dir",
        env = "LEPUS_DATA_DIR",
        default_value = "lepus-data"
    )]
    data_dir: PathBuf,
    /// The admin socket itself, if not in the data directory.
    #[arg(long, env = "LEPUS_ADMIN_SOCKET")]
    socket: Option<PathBuf>,
    /// The node to talk to (accepted for rabbitmqctl compatibility; there is one node).
    #[arg(short = 'n', long = "node")]
    node: Option<String>,
    /// Print less.
    #[arg(short = 'q', long = "quiet")]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Command {
    /// Shows the broker's state.
    Status {
        /// `json` for rabbitmqctl's JSON report.
        #[arg(long)]
        formatter: Option<String>,
    },
    /// Waits until the broker has started (its AMQP side runs).
    #[command(name = "await_startup")]
    AwaitStartup {
        /// How long to wait, in seconds.
        #[arg(short = 't', long = "timeout", default_value_t = 300)]
        timeout: u64,
    },
    /// Stops the AMQP side: listeners close and connections are closed; the process stays.
    #[command(name = "stop_app")]
    StopApp,
    /// Starts the AMQP side again after stop_app.
    #[command(name = "start_app")]
    StartApp,
    /// Sets the memory high watermark: a fraction of the machine's memory, or
    /// `absolute <size>`.
    #[command(name = "set_vm_memory_high_watermark")]
    SetVmMemoryHighWatermark {
        /// A fraction (0.4), or `absolute` followed by a size.
        value: String,
        /// The size, after `absolute`.
        size: Option<String>,
    },
    /// Sets the free disk limit: a size, or `mem_relative <fraction>`.
    #[command(name = "set_disk_free_limit")]
    SetDiskFreeLimit {
        /// A size (50MB), or `mem_relative` followed by a fraction.
        value: String,
        /// The fraction, after `mem_relative`.
        fraction: Option<String>,
    },
    /// Sets a vhost's limits: a JSON object such as `{"max-connections": 256}`.
    #[command(name = "set_vhost_limits")]
    SetVhostLimits {
        /// The vhost.
        #[arg(short = 'p', long = "vhost", default_value = "/")]
        vhost: String,
        /// The limits, as JSON (`max-queues`, `max-connections`; negative means none).
        definition: String,
    },
    /// Clears a vhost's limits.
    #[command(name = "clear_vhost_limits")]
    ClearVhostLimits {
        /// The vhost.
        #[arg(short = 'p', long = "vhost", default_value = "/")]
        vhost: String,
    },
    /// Adds a user.
    #[command(name = "add_user")]
    AddUser {
        username: String,
        /// Read from standard input when left out, as rabbitmqctl does.
        password: Option<String>,
    },
    /// Deletes a user and their permissions.
    #[command(name = "delete_user")]
    DeleteUser { username: String },
    /// Changes a user's password.
    #[command(name = "change_password")]
    ChangePassword { username: String, password: String },
    /// Replaces a user's tags (none clears them).
    #[command(name = "set_user_tags")]
    SetUserTags { username: String, tags: Vec<String> },
    /// Sets a user's configure, write and read patterns in a vhost.
    #[command(name = "set_permissions")]
    SetPermissions {
        #[arg(short = 'p', long = "vhost", default_value = "/")]
        vhost: String,
        username: String,
        configure: String,
        write: String,
        read: String,
    },
    /// Revokes a user's permissions in a vhost.
    #[command(name = "clear_permissions")]
    ClearPermissions {
        #[arg(short = 'p', long = "vhost", default_value = "/")]
        vhost: String,
        username: String,
    },
    /// Sets a user's topic write and read patterns on an exchange.
    #[command(name = "set_topic_permissions")]
    SetTopicPermissions {
        #[arg(short = 'p', long = "vhost", default_value = "/")]
        vhost: String,
        username: String,
        exchange: String,
        write: String,
        read: String,
    },
    /// Lists queues and their properties.
    #[command(name = "list_queues")]
    ListQueues(list::ListArgs),
    /// Lists exchanges.
    #[command(name = "list_exchanges")]
    ListExchanges(list::ListArgs),
    /// Lists all bindings on a vhost.
    #[command(name = "list_bindings")]
    ListBindings(list::ListArgs),
    /// Lists user names and tags.
    #[command(name = "list_users")]
    ListUsers(list::ListArgs),
    /// Lists virtual hosts.
    #[command(name = "list_vhosts")]
    ListVhosts(list::ListArgs),
    /// Lists user permissions in a virtual host.
    #[command(name = "list_permissions")]
    ListPermissions(list::ListArgs),
    /// Lists all policies in a virtual host.
    #[command(name = "list_policies")]
    ListPolicies(list::ListArgs),
    /// Lists all consumers for a vhost.
    #[command(name = "list_consumers")]
    ListConsumers(list::ListArgs),
    /// Lists AMQP 0.9.1 connections for the node.
    #[command(name = "list_connections")]
    ListConnections(list::ListArgs),
    /// Lists all channels in the node.
    #[command(name = "list_channels")]
    ListChannels(list::ListArgs),
    /// Creates a virtual host.
    #[command(name = "add_vhost")]
    AddVhost {
        vhost: String,
        #[arg(long)]
        description: Option<String>,
        #[arg(long)]
        tags: Option<String>,
    },
    /// Deletes a virtual host and everything in it.
    #[command(name = "delete_vhost")]
    DeleteVhost { vhost: String },
    /// Sets or updates a policy.
    #[command(name = "set_policy")]
    SetPolicy {
        #[arg(short = 'p', long = "vhost", default_value = "/")]
        vhost: String,
        #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
        priority: i64,
        #[arg(long = "apply-to", default_value = "all")]
        apply_to: String,
        name: String,
        pattern: String,
        definition: String,
    },
    /// Clears a policy.
    #[command(name = "clear_policy")]
    ClearPolicy {
        #[arg(short = 'p', long = "vhost", default_value = "/")]
        vhost: String,
        name: String,
    },
    /// Deletes a queue.
    #[command(name = "delete_queue")]
    DeleteQueue {
        #[arg(short = 'p', long = "vhost", default_value = "/")]
        vhost: String,
        queue: String,
        #[arg(short = 'e', long = "if-empty")]
        if_empty: bool,
        #[arg(short = 'u', long = "if-unused")]
        if_unused: bool,
    },
    /// Purges a queue (removes its ready messages).
    #[command(name = "purge_queue")]
    PurgeQueue {
        #[arg(short = 'p', long = "vhost", default_value = "/")]
        vhost: String,
        queue: String,
    },
    /// Closes a connection (by the name list_connections shows), telling the client why.
    #[command(name = "close_connection")]
    CloseConnection { connection: String, reason: String },
    /// Closes every connection of a vhost (or of the node, with --global).
    #[command(name = "close_all_connections")]
    CloseAllConnections {
        #[arg(short = 'p', long = "vhost", default_value = "/")]
        vhost: String,
        #[arg(short = 'a', long)]
        global: bool,
        reason: String,
    },
    /// Exports the definitions to a file (`-` for standard output).
    #[command(name = "export_definitions")]
    ExportDefinitions { path: String },
    /// Imports definitions from a file.
    #[command(name = "import_definitions")]
    ImportDefinitions { path: String },
    /// Checks a user's password.
    #[command(name = "authenticate_user")]
    AuthenticateUser { username: String, password: String },
    /// Sets a user's limits: a JSON object such as `{"max-connections": 10}` (the names
    /// given replace those set; negative means none).
    #[command(name = "set_user_limits")]
    SetUserLimits {
        username: String,
        definition: String,
    },
    /// Clears one of a user's limits by name, or `all` of them.
    #[command(name = "clear_user_limits")]
    ClearUserLimits { username: String, limit: String },
    /// Lists a user's limits (guest's unless named), or every user's with --global.
    #[command(name = "list_user_limits")]
    ListUserLimits {
        #[arg(long)]
        user: Option<String>,
        #[arg(long)]
        global: bool,
    },
    /// Revokes a user's topic permissions in a vhost (on one exchange, if named).
    #[command(name = "clear_topic_permissions")]
    ClearTopicPermissions {
        #[arg(short = 'p', long = "vhost", default_value = "/")]
        vhost: String,
        username: String,
        exchange: Option<String>,
    },
}

/// rabbitmqctl's exit status for bad usage (EX_USAGE).
const EXIT_USAGE: u8 = 64;
/// rabbitmqctl's exit status when the node cannot be reached or refuses (EX_UNAVAILABLE).
const EXIT_UNAVAILABLE: u8 = 69;

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            let _ = e.print();
            return match e.use_stderr() {
                true => ExitCode::from(EXIT_USAGE),
                false => ExitCode::SUCCESS,
            };
        }
    };
    let socket = args
        .socket
        .clone()
        .unwrap_or_else(|| args.data_dir.join("lepus.sock"));
    let _ = &args.node;
    if !node::works_stopped(&args.command) {
        let argv: Vec<String> = std::env::args().skip(1).collect();
        if let Some(refused) = node::refused_while_stopped(&socket, &argv) {
            return finish(refused, args.quiet);
        }
    }
    if let Some((kind, list_args)) = list_command(&args.command) {
        return match list::run(kind, list_args, args.quiet, &socket) {
            Ok(out) => {
                if !out.is_empty() {
                    println!("{out}");
                }
                ExitCode::SUCCESS
            }
            Err(list::ListError::Usage(e)) => {
                eprintln!("{e}");
                ExitCode::from(EXIT_USAGE)
            }
            Err(list::ListError::Broker(e)) => {
                eprintln!("Error: {e}");
                ExitCode::from(EXIT_UNAVAILABLE)
            }
        };
    }
    if let Some(done) = node::run(&args.command, &socket)
        .or_else(|| objects::run(&args.command, &socket))
        .or_else(|| users::run(&args.command, &socket))
        .or_else(|| user_limits::run(&args.command, &socket))
    {
        return finish(done, args.quiet);
    }
    match run(&args, &socket) {
        Ok(out) => {
            if !args.quiet && !out.is_empty() {
                println!("{out}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("Error: {e}");
            ExitCode::from(EXIT_UNAVAILABLE)
        }
    }
}

/// The arguments, with usage messages naming the program as it was called: `rabbitmqctl`
/// through a symlink of that name, `lepusctl` otherwise.
fn parse_args() -> Result<Args, clap::Error> {
    use clap::{CommandFactory, FromArgMatches};
    let called = std::env::args_os()
        .next()
        .map(PathBuf::from)
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .filter(|n| n == "rabbitmqctl")
        .unwrap_or_else(|| "lepusctl".into());
    let matches = Args::command().bin_name(called).try_get_matches()?;
    Args::from_arg_matches(&matches)
}

/// Prints what a command printed and ends with its status.
fn finish(done: objects::Done, quiet: bool) -> ExitCode {
    let mut stdout = done.stdout;
    // `-q` leaves out the banner, the first line (and a command that failed before its
    // banner has an empty one).
    if !stdout.is_empty() && (quiet || stdout[0].is_empty()) {
        stdout.remove(0);
    }
    for line in &stdout {
        println!("{line}");
    }
    for line in &done.stderr {
        eprintln!("{line}");
    }
    ExitCode::from(done.status)
}

/// The kind of object a `list_*` command lists, and its arguments.
fn list_command(command: &Command) -> Option<(list::Kind, &list::ListArgs)> {
    match command {
        Command::ListQueues(a) => Some((list::Kind::Queues, a)),
        Command::ListExchanges(a) => Some((list::Kind::Exchanges, a)),
        Command::ListBindings(a) => Some((list::Kind::Bindings, a)),
        Command::ListUsers(a) => Some((list::Kind::Users, a)),
        Command::ListVhosts(a) => Some((list::Kind::Vhosts, a)),
        Command::ListPermissions(a) => Some((list::Kind::Permissions, a)),
        Command::ListPolicies(a) => Some((list::Kind::Policies, a)),
        Command::ListConsumers(a) => Some((list::Kind::Consumers, a)),
        Command::ListConnections(a) => Some((list::Kind::Connections, a)),
        Command::ListChannels(a) => Some((list::Kind::Channels, a)),
        _ => None,
    }
}

fn run(args: &Args, socket: &std::path::Path) -> Result<String, String> {
    match &args.command {
        Command::SetVhostLimits { vhost, definition } => {
            let body: Value = serde_json::from_str(definition)
                .map_err(|e| format!("the limits are not JSON: {e}"))?;
            put(socket, &vhost_limits_path(vhost), body)?;
            Ok(format!("Applying limits for vhost \"{vhost}\" ..."))
        }
        Command::ClearVhostLimits { vhost } => {
            http::request(socket, "DELETE", &vhost_limits_path(vhost), None)?;
            Ok(format!("Clearing vhost \"{vhost}\" limits ..."))
        }
        _ => Err("not a command of this module".into()),
    }
}

fn vhost_limits_path(vhost: &str) -> String {
    format!("/api/lepus/vhost_limits/{}", percent_encode(vhost))
}

/// Percent-encodes everything but unreserved characters, for a name inside a URL path.
pub(crate) fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub(crate) fn put(socket: &std::path::Path, path: &str, body: Value) -> Result<Value, String> {
    http::request(socket, "PUT", path, Some(body))
}
