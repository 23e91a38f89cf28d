//! rabbitmqctl's `list_*` commands: the same banners, default columns, column names,
//! tab-separated table (or `--formatter json`) and value formats, read from the management
//! API's JSON over the admin socket.

use std::path::Path;

use serde_json::{Map, Value, json};

use crate::{http, percent_encode};

/// What a `list_*` command was asked.
#[derive(Debug, Clone, clap::Args)]
pub struct ListArgs {
    /// The vhost (for the commands that list one vhost's objects).
    #[arg(short = 'p', long = "vhost", default_value = "/")]
    pub vhost: String,
    /// Leave out the line naming the columns.
    #[arg(long = "no-table-headers")]
    pub no_table_headers: bool,
    /// `table` (tab-separated, the default) or `json`.
    #[arg(long = "formatter", default_value = "table")]
    pub formatter: String,
    /// Accepted for rabbitmqctl compatibility.
    #[arg(short = 't', long = "timeout")]
    pub timeout: Option<u64>,
    /// The columns to show (rabbitmqctl's info keys).
    pub columns: Vec<String>,
}

/// The kinds of object rabbitmqctl lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Queues,
    Exchanges,
    Bindings,
    Users,
    Vhosts,
    Permissions,
    Policies,
    Consumers,
    Connections,
    Channels,
}

/// Why a list failed: bad arguments (exit 64, as rabbitmqctl) or the broker.
pub enum ListError {
    Usage(String),
    Broker(String),
}

impl Kind {
    /// The columns shown when none are asked for.
    fn default_columns(self) -> &'static [&'static str] {
        match self {
            Kind::Queues => &["name", "messages"],
            Kind::Exchanges => &["name", "type"],
            Kind::Bindings => &[
                "source_name",
                "source_kind",
                "destination_name",
                "destination_kind",
                "routing_key",
                "arguments",
            ],
            Kind::Users => &["user", "tags"],
            Kind::Vhosts => &["name"],
            Kind::Permissions => &["user", "configure", "write", "read"],
            Kind::Policies => &[
                "vhost",
                "name",
                "pattern",
                "apply-to",
                "definition",
                "priority",
            ],
            Kind::Consumers => &[
                "queue_name",
                "channel_pid",
                "consumer_tag",
                "ack_required",
                "prefetch_count",
                "active",
                "arguments",
            ],
            Kind::Connections => &["user", "peer_host", "peer_port", "state"],
            Kind::Channels => &["pid", "user", "consumer_count", "messages_unacknowledged"],
        }
    }

    /// The API path that lists them.
    fn path(self, vhost: &str) -> String {
        let v = percent_encode(vhost);
        match self {
            Kind::Queues => format!("/api/queues/{v}"),
            Kind::Exchanges => format!("/api/exchanges/{v}"),
            Kind::Bindings => format!("/api/bindings/{v}"),
            Kind::Users => "/api/users".into(),
            Kind::Vhosts => "/api/vhosts".into(),
            Kind::Permissions => format!("/api/vhosts/{v}/permissions"),
            Kind::Policies => format!("/api/policies/{v}"),
            Kind::Consumers => format!("/api/consumers/{v}"),
            Kind::Connections => "/api/connections".into(),
            Kind::Channels => "/api/channels".into(),
        }
    }

    /// The lines rabbitmqctl prints first, unless `-q`.
    fn banner(self, vhost: &str) -> String {
        match self {
            Kind::Queues => {
                format!("Timeout: 60.0 seconds ...\nListing queues for vhost {vhost} ...")
            }
            Kind::Exchanges => format!("Listing exchanges for vhost {vhost} ..."),
            Kind::Bindings => format!("Listing bindings for vhost {vhost}..."),
            Kind::Users => "Listing users ...".into(),
            Kind::Vhosts => "Listing vhosts ...".into(),
            Kind::Permissions => format!("Listing permissions for vhost \"{vhost}\" ..."),
            Kind::Policies => format!("Listing policies for vhost \"{vhost}\" ..."),
            Kind::Consumers => format!("Listing consumers in vhost {vhost} ..."),
            Kind::Connections => "Listing connections ...".into(),
            Kind::Channels => "Listing channels ...".into(),
        }
    }

    /// One API object as rabbitmqctl's info keys.
    fn row(self, item: &Value) -> Map<String, Value> {
        let mut row = match item {
            Value::Object(m) => m.clone(),
            _ => Map::new(),
        };
        let field = |k: &str| item.get(k).cloned().unwrap_or(Value::Null);
        match self {
            Kind::Bindings => {
                row.insert("source_name".into(), field("source"));
                row.insert("source_kind".into(), json!("exchange"));
                row.insert("destination_name".into(), field("destination"));
                row.insert("destination_kind".into(), field("destination_type"));
            }
            Kind::Users => {
                row.insert("user".into(), field("name"));
            }
            Kind::Consumers => {
                row.insert("queue_name".into(), item["queue"]["name"].clone());
                row.insert(
                    "channel_pid".into(),
                    item["channel_details"]["name"].clone(),
                );
            }
            Kind::Connections | Kind::Channels => {
                row.insert("pid".into(), field("name"));
            }
            _ => {}
        }
        row
    }
}

/// Runs a `list_*` command and returns what rabbitmqctl would print.
pub fn run(kind: Kind, args: &ListArgs, quiet: bool, socket: &Path) -> Result<String, ListError> {
    let columns: Vec<String> = match args.columns.is_empty() {
        true => kind
            .default_columns()
            .iter()
            .map(|c| c.to_string())
            .collect(),
        false => args
            .columns
            .iter()
            .flat_map(|c| c.split(','))
            .map(str::to_owned)
            .collect(),
    };
    let items = match http::request(socket, "GET", &kind.path(&args.vhost), None) {
        Ok(Value::Array(items)) => items,
        Ok(_) => Vec::new(),
        // A vhost that does not exist lists nothing, as in rabbitmqctl.
        Err(e) if e.contains("HTTP 404") => Vec::new(),
        Err(e) => return Err(ListError::Broker(e)),
    };
    let rows: Vec<Map<String, Value>> = items.iter().map(|i| kind.row(i)).collect();
    let known = rows.first();
    let unknown: Vec<&String> = columns
        .iter()
        .filter(|c| known.is_some_and(|r| !r.contains_key(c.as_str())))
        .collect();
    if !unknown.is_empty() {
        let names: Vec<&str> = unknown.iter().map(|c| c.as_str()).collect();
        return Err(ListError::Usage(format!(
            "Error (argument validation): Info key(s) {} are not supported",
            names.join(",")
        )));
    }
    let mut out = Vec::new();
    if !quiet && args.formatter != "json" {
        out.push(kind.banner(&args.vhost));
    }
    if args.formatter == "json" {
        let objects: Vec<String> = rows
            .iter()
            .map(|r| {
                // In the order the columns were asked for, as rabbitmqctl prints them.
                let fields: Vec<String> = columns
                    .iter()
                    .map(|c| format!("{}:{}", json!(c), json_cell(c, r.get(c.as_str()))))
                    .collect();
                format!("{{{}}}", fields.join(","))
            })
            .collect();
        out.push(format!("[\n{}\n]", objects.join("\n,")));
        return Ok(out.join("\n"));
    }
    if !args.no_table_headers && !rows.is_empty() {
        out.push(columns.join("\t"));
    }
    for r in &rows {
        let cells: Vec<String> = columns.iter().map(|c| cell(c, r.get(c.as_str()))).collect();
        out.push(cells.join("\t"));
    }
    Ok(out.join("\n"))
}

/// A value as rabbitmqctl's table shows it: tags and lists as `[a, b]`, arguments as an
/// Erlang property list, a policy definition as JSON, nothing for undefined.
fn cell(column: &str, v: Option<&Value>) -> String {
    match (column, v) {
        (_, None | Some(Value::Null)) => String::new(),
        ("definition", Some(v)) => v.to_string(),
        (_, Some(Value::String(s))) => s.clone(),
        (_, Some(Value::Array(items))) => {
            let inner: Vec<String> = items.iter().map(|i| cell("", Some(i))).collect();
            format!("[{}]", inner.join(", "))
        }
        (_, Some(Value::Object(map))) => {
            let mut pairs: Vec<(&String, &Value)> = map.iter().collect();
            pairs.sort_by(|a, b| a.0.cmp(b.0));
            let inner: Vec<String> = pairs
                .iter()
                .map(|(k, v)| format!("{{\"{k}\",{}}}", erlang_term(v)))
                .collect();
            format!("[{}]", inner.join(","))
        }
        (_, Some(other)) => other.to_string(),
    }
}

fn erlang_term(v: &Value) -> String {
    match v {
        Value::String(s) => format!("\"{s}\""),
        other => cell("", Some(other)),
    }
}

/// A value as `--formatter json` shows it: arguments as `[name, type, value]` triples.
fn json_cell(column: &str, v: Option<&Value>) -> Value {
    match (column, v) {
        ("arguments", Some(Value::Object(map))) => {
            let mut pairs: Vec<(&String, &Value)> = map.iter().collect();
            pairs.sort_by(|a, b| a.0.cmp(b.0));
            Value::Array(
                pairs
                    .into_iter()
                    .map(|(k, v)| {
                        let kind = match v {
                            Value::String(_) => "longstr",
                            Value::Bool(_) => "bool",
                            Value::Number(n) if n.is_f64() => "double",
                            Value::Number(_) => "long",
                            Value::Array(_) => "array",
                            _ => "table",
                        };
                        json!([k, kind, v])
                    })
                    .collect(),
            )
        }
        ("arguments", _) => json!([]),
        (_, Some(v)) => v.clone(),
        (_, None) => Value::Null,
    }
}
