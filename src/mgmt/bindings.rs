//! Bindings: `/api/bindings[/{vhost}]` and `/api/bindings/{vhost}/e/{source}/q|e/{dest}[/{props}]`.
//!
//! A binding is named in paths by its `properties_key`: the routing key percent-encoded
//! (`~` when empty), then `~` and a hash of its arguments when it has any. Clients read it
//! from listings or from the `Location` of the POST that made the binding and hand it back to
//! delete; they never compute it, so Lepus's hash need not be RabbitMQ's.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use base64::Engine;
use serde::Deserialize;
use serde_json::{Value, json};

use super::http::{
    ApiError, ApiResult, Caller, arguments_of, body_or_empty, durable, exchange_name, no_content,
    visible_vhosts,
};
use super::list::{List, ListQuery, list_of};
use super::state::Mgmt;
use crate::auth::access::{Permission, Resource};
use crate::broker::exchange::Destination;
use crate::broker::vhost::VirtualHost;
use crate::broker::vhost::checks::binding_checks;
use crate::store::definitions::encode_arguments;

pub fn routes() -> Router<Arc<Mgmt>> {
    Router::new()
        .route("/api/bindings", get(list_all))
        .route("/api/bindings/{vhost}", get(list_vhost))
        .route(
            "/api/bindings/{vhost}/e/{source}/{kind}/{destination}",
            get(between).post(bind),
        )
        .route(
            "/api/bindings/{vhost}/e/{source}/{kind}/{destination}/{props}",
            get(show).delete(unbind),
        )
}

/// One binding, as listed.
#[derive(Debug, Clone)]
pub struct BindingView {
    pub source: String,
    pub destination: String,
    pub destination_type: &'static str,
    pub routing_key: String,
    pub arguments: amq_protocol::types::FieldTable,
}

impl BindingView {
    pub fn properties_key(&self) -> String {
        properties_key(&self.routing_key, &self.arguments)
    }

    fn json(&self, vhost: &str) -> Value {
        json!({
            "source": self.source,
            "vhost": vhost,
            "destination": self.destination,
            "destination_type": self.destination_type,
            "routing_key": self.routing_key,
            "arguments": encode_arguments(&self.arguments).0,
            "properties_key": self.properties_key(),
        })
    }
}

/// Which of a vhost's bindings to list: only the exchanges and destinations asked for are
/// looked at and copied (a request about one binding copied and sorted all of a vhost's).
#[derive(Debug, Clone, Copy, Default)]
pub struct Select<'a> {
    /// The source exchange (`""`: the default exchange).
    pub source: Option<&'a str>,
    /// The destination: its type (`"queue"` or `"exchange"`) and name.
    pub destination: Option<(&'static str, &'a str)>,
}

impl Select<'_> {
    /// Every binding.
    pub const ALL: Select<'static> = Select {
        source: None,
        destination: None,
    };

    fn takes(&self, destination: &Destination) -> bool {
        let (kind, name) = match destination {
            Destination::Queue(q) => ("queue", &q.name),
            Destination::Exchange(x) => ("exchange", &x.name),
        };
        self.destination.is_none_or(|(k, n)| k == kind && n == name)
    }
}

/// The bindings of a vhost that `select` asks for, the default exchange's implicit ones
/// first, then by source and routing key, as RabbitMQ lists them.
pub fn all_bindings(vhost: &VirtualHost, select: Select<'_>) -> Vec<BindingView> {
    let implicit = |q: &crate::broker::queue::Queue| BindingView {
        source: String::new(),
        destination: q.name.clone(),
        destination_type: "queue",
        routing_key: q.name.clone(),
        arguments: Default::default(),
    };
    let mut out: Vec<BindingView> = match (select.source, select.destination) {
        (Some(s), _) if !s.is_empty() => Vec::new(),
        (_, Some(("queue", name))) => vhost.queue(name).iter().map(|q| implicit(q)).collect(),
        (_, Some(_)) => Vec::new(),
        (_, None) => {
            let mut queues = vhost.queues();
            queues.sort_by(|a, b| a.name.cmp(&b.name));
            queues.iter().map(|q| implicit(q)).collect()
        }
    };
    let exchanges = match select.source {
        Some(s) => vhost.exchange(s).into_iter().collect(),
        None => vhost.exchanges(),
    };
    let mut exchanged = Vec::new();
    for x in exchanges {
        for b in x.bindings_where(|d| select.takes(d)) {
            let (destination, destination_type) = match &b.destination {
                Destination::Queue(q) => (q.name.clone(), "queue"),
                Destination::Exchange(d) => (d.name.clone(), "exchange"),
            };
            exchanged.push(BindingView {
                source: x.name.clone(),
                destination,
                destination_type,
                routing_key: b.routing_key,
                arguments: b.arguments,
            });
        }
    }
    exchanged.sort_by(|a, b| {
        (
            &a.source,
            &a.destination_type,
            &a.destination,
            &a.routing_key,
        )
            .cmp(&(
                &b.source,
                &b.destination_type,
                &b.destination,
                &b.routing_key,
            ))
    });
    out.extend(exchanged);
    out
}

/// The bindings of `vhosts` that `select` asks for, answered as a list: a whole list is
/// written as the client reads it (see [`list_of`]).
pub fn list_bindings(vhosts: &[Arc<VirtualHost>], select: Select<'_>, q: &ListQuery) -> ApiResult {
    let items: Vec<(Arc<VirtualHost>, BindingView)> = vhosts
        .iter()
        .flat_map(|v| all_bindings(v, select).into_iter().map(|b| (v.clone(), b)))
        .collect();
    // Bindings have no name to filter or sort by, as in RabbitMQ.
    list_of(items, q, |_| None, |(v, b)| b.json(&v.name))
}

/// Percent-encodes as Python's `quote_plus` (and RabbitMQ's properties keys): unreserved
/// characters stay, a space is `+`, everything else `%XX`.
pub fn quote_plus(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' | b'-' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// A properties key as a client may send it (`r k` for `r+k`): the routing key part decoded
/// and encoded again, so either spelling finds the binding, as in RabbitMQ.
fn normalise_key(props: &str) -> String {
    let (rk, hash) = match props.rsplit_once('~') {
        Some((rk, hash)) if hash.len() == 6 => (rk, Some(hash)),
        _ => (props, None),
    };
    let rk = match rk {
        "" | "~" => "~".to_owned(),
        rk => quote_plus(&unquote_plus(rk)),
    };
    match (hash, rk.as_str()) {
        (Some(h), "~") => format!("~{h}"),
        (Some(h), _) => format!("{rk}~{h}"),
        (None, _) => rk,
    }
}

/// Decodes `+` and `%XX` (bytes that do not decode are kept as they are).
pub fn unquote_plus(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match s.get(i + 1..i + 3).map(|h| u8::from_str_radix(h, 16)) {
                    Some(Ok(b)) => {
                        out.push(b);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Percent-encodes a path segment.
fn quote(s: &str) -> String {
    quote_plus(s).replace('+', "%2B")
}

pub fn properties_key(routing_key: &str, arguments: &amq_protocol::types::FieldTable) -> String {
    let key = match routing_key {
        "" => "~".to_owned(),
        rk => quote_plus(rk),
    };
    if arguments.inner().is_empty() {
        return key;
    }
    let hash = crc32fast::hash(&crate::protocol::table::encode(arguments));
    let hash = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(hash.to_be_bytes());
    match routing_key {
        "" => format!("~{hash}"),
        _ => format!("{key}~{hash}"),
    }
}

async fn list_all(State(m): State<Arc<Mgmt>>, caller: Caller, Query(q): List) -> ApiResult {
    let vhosts = visible_vhosts(&m.broker, &caller);
    m.build(&caller, move |_| list_bindings(&vhosts, Select::ALL, &q))
        .await
}

async fn list_vhost(
    State(m): State<Arc<Mgmt>>,
    caller: Caller,
    Path(vhost): Path<String>,
    Query(q): List,
) -> ApiResult {
    let vhost = caller.vhost(&m.broker, &vhost)?;
    m.build(&caller, move |_| list_bindings(&[vhost], Select::ALL, &q))
        .await
}

/// `q` or `e` in a path.
fn destination_type(kind: &str) -> Result<&'static str, ApiError> {
    match kind {
        "q" => Ok("queue"),
        "e" => Ok("exchange"),
        _ => Err(ApiError::not_found()),
    }
}

/// Checks that both ends exist, so a missing one is a 404.
fn ends(
    vhost: &VirtualHost,
    source: &str,
    kind: &'static str,
    destination: &str,
) -> Result<(), ApiError> {
    vhost.exchange(source).ok_or_else(ApiError::not_found)?;
    let found = match kind {
        "queue" => vhost.queue(destination).is_some(),
        _ => vhost.exchange(destination).is_some(),
    };
    found.then_some(()).ok_or_else(ApiError::not_found)
}

async fn between(
    State(m): State<Arc<Mgmt>>,
    caller: Caller,
    Path((vhost, source, kind, destination)): Path<(String, String, String, String)>,
    Query(q): List,
) -> ApiResult {
    let vhost = caller.vhost(&m.broker, &vhost)?;
    let kind = destination_type(&kind)?;
    ends(&vhost, exchange_name(&source), kind, &destination)?;
    m.build(&caller, move |_| {
        let select = Select {
            source: Some(exchange_name(&source)),
            destination: Some((kind, &destination)),
        };
        list_bindings(&[vhost], select, &q)
    })
    .await
}

async fn show(
    State(m): State<Arc<Mgmt>>,
    caller: Caller,
    Path((vhost, source, kind, destination, props)): Path<(String, String, String, String, String)>,
) -> ApiResult {
    let vhost = caller.vhost(&m.broker, &vhost)?;
    let kind = destination_type(&kind)?;
    let source = exchange_name(&source);
    let select = Select {
        source: Some(source),
        destination: Some((kind, &destination)),
    };
    let key = normalise_key(&props);
    all_bindings(&vhost, select)
        .into_iter()
        .find(|b| b.properties_key() == key)
        .map(|b| Json(b.json(&vhost.name)).into_response())
        .ok_or_else(ApiError::not_found)
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct BindBody {
    routing_key: Option<String>,
    arguments: Option<Value>,
}

/// What binding or unbinding checks, as over AMQP (`broker::vhost::checks`): write on the
/// destination, read on the source, and a topic source's topic read permission on the key.
fn authorize_binding(
    m: &Mgmt,
    caller: &Caller,
    vhost: &VirtualHost,
    destination: Resource<'_>,
    source: &str,
    routing_key: &str,
) -> Result<(), ApiError> {
    caller.authorize_all(&m.broker, &vhost.name, binding_checks(destination, source))?;
    match vhost.exchange(source) {
        Some(x) if !source.is_empty() && destination != Resource::Exchange("") => {
            caller.authorize_topic(&m.broker, &vhost.name, &x, routing_key, Permission::Read)
        }
        _ => Ok(()),
    }
}

/// POST: binds, answering 201 with the new binding's path in `Location` (relative, ending
/// in its properties key), which clients such as Terraform's provider parse.
async fn bind(
    State(m): State<Arc<Mgmt>>,
    caller: Caller,
    Path((vhost, source, kind, destination)): Path<(String, String, String, String)>,
    body: Bytes,
) -> ApiResult {
    let vhost = caller.vhost_to_change(&m.broker, &vhost)?;
    let kind = destination_type(&kind)?;
    let source = exchange_name(&source).to_owned();
    let req: BindBody = body_or_empty(&body)?;
    let routing_key = req.routing_key.unwrap_or_default();
    let arguments = arguments_of(req.arguments.as_ref())?;
    ends(&vhost, &source, kind, &destination)?;
    let dest = match kind {
        "queue" => Resource::Queue(&destination),
        _ => Resource::Exchange(&destination),
    };
    authorize_binding(&m, &caller, &vhost, dest, &source, &routing_key)?;
    let epoch = match kind {
        "queue" => vhost.bind_queue(&destination, &source, &routing_key, &arguments, 0)?,
        _ => vhost.bind_exchange(&destination, &source, &routing_key, &arguments)?,
    };
    durable(&m.broker, epoch).await?;
    let location = format!(
        "{}/{}",
        quote(&destination),
        quote(&properties_key(&routing_key, &arguments))
    );
    let mut response = StatusCode::CREATED.into_response();
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    Ok(response)
}

async fn unbind(
    State(m): State<Arc<Mgmt>>,
    caller: Caller,
    Path((vhost, source, kind, destination, props)): Path<(String, String, String, String, String)>,
) -> ApiResult {
    let vhost = caller.vhost_to_change(&m.broker, &vhost)?;
    let kind = destination_type(&kind)?;
    let source = exchange_name(&source).to_owned();
    let select = Select {
        source: Some(&source),
        destination: Some((kind, &destination)),
    };
    let key = normalise_key(&props);
    let found = all_bindings(&vhost, select)
        .into_iter()
        .find(|b| b.properties_key() == key);
    let Some(b) = found else {
        return Err(ApiError::not_found());
    };
    let dest = match kind {
        "queue" => Resource::Queue(&destination),
        _ => Resource::Exchange(&destination),
    };
    authorize_binding(&m, &caller, &vhost, dest, &source, &b.routing_key)?;
    let epoch = match kind {
        "queue" => vhost.unbind_queue(&destination, &source, &b.routing_key, &b.arguments, 0)?,
        _ => vhost.unbind_exchange(&destination, &source, &b.routing_key, &b.arguments)?,
    };
    durable(&m.broker, epoch).await?;
    Ok(no_content())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_keys_as_rabbitmq_writes_them() {
        let none = amq_protocol::types::FieldTable::default();
        assert_eq!(properties_key("", &none), "~");
        assert_eq!(properties_key("a b/c", &none), "a+b%2Fc");
        assert_eq!(properties_key("a.*", &none), "a.%2A");
        assert_eq!(properties_key("q1", &none), "q1");
        assert_eq!(normalise_key("r k"), "r+k");
        assert_eq!(normalise_key("a+b%2Fc"), "a+b%2Fc");
        assert_eq!(normalise_key("~"), "~");
    }
}
