//! What every management endpoint shares: who is calling and what they may do, RabbitMQ's
//! error bodies, and its list parameters (filtering, sorting, columns, pages).

use std::sync::Arc;

use axum::extract::{FromRequestParts, Query, Request};
use axum::http::StatusCode;
use axum::http::Uri;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::auth::User;
use crate::auth::access::{Permission, Resource};
use crate::broker::Broker;
use crate::broker::vhost::VirtualHost;
use crate::protocol::error::{AmqpError, ReplyCode};

/// The largest page RabbitMQ serves.
pub const MAX_PAGE_SIZE: usize = 500;
/// The page size when `page` is given without `page_size`.
pub const DEFAULT_PAGE_SIZE: usize = 100;

/// An error answer with RabbitMQ's status and body (`{"error": …, "reason": …}`).
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    error: &'static str,
    reason: String,
}

pub type ApiResult = Result<Response, ApiError>;

impl ApiError {
    /// RabbitMQ's 404, the same for every missing object.
    pub fn not_found() -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            error: "Object Not Found",
            reason: "Not Found".into(),
        }
    }

    pub fn bad_request(reason: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            error: "bad_request",
            reason: reason.into(),
        }
    }

    /// 401 for a user who may not do this (RabbitMQ spells it `not_authorised` here).
    pub fn not_authorised(reason: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            error: "not_authorised",
            reason: reason.into(),
        }
    }

    /// 403 for a request refused whoever sends it.
    pub fn forbidden(reason: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::FORBIDDEN,
            error: "forbidden",
            reason: reason.into(),
        }
    }

    /// 503 for a request the API has no room for now; it may be tried again.
    pub fn unavailable(reason: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            error: "service_unavailable",
            reason: reason.into(),
        }
    }

    /// A broker operation refused: the AMQP reply code decides the status.
    /// The reason is the AMQP text without its `NAME - ` prefix, as RabbitMQ shows it.
    pub fn from_amqp(e: AmqpError) -> Self {
        let prefix = format!("{} - ", e.code.name());
        let reason = e.text.strip_prefix(&prefix).unwrap_or(&e.text).to_owned();
        match e.code {
            ReplyCode::NotFound => ApiError::not_found(),
            ReplyCode::AccessRefused => ApiError::not_authorised(reason),
            ReplyCode::InternalError => ApiError {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                error: "internal_server_error",
                reason,
            },
            _ => ApiError::bad_request(reason),
        }
    }

    /// A change that failed with a rabbitmqctl-style message: "does not exist" is a 404.
    pub fn from_message(reason: String) -> Self {
        if reason.contains("does not exist") {
            ApiError {
                status: StatusCode::NOT_FOUND,
                error: "Object Not Found",
                reason,
            }
        } else {
            ApiError::bad_request(reason)
        }
    }
}

impl From<AmqpError> for ApiError {
    fn from(e: AmqpError) -> Self {
        ApiError::from_amqp(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({"error": self.error, "reason": self.reason})),
        )
            .into_response()
    }
}

/// 201 for something created, 204 for something changed, as RabbitMQ answers PUTs.
pub fn created(was_new: bool) -> Response {
    match was_new {
        true => StatusCode::CREATED.into_response(),
        false => StatusCode::NO_CONTENT.into_response(),
    }
}

pub fn no_content() -> Response {
    StatusCode::NO_CONTENT.into_response()
}

/// Who sent a request: an operator on the admin socket (whose file permissions were the
/// check), or a user who logged in with HTTP Basic on the management listener.
#[derive(Debug, Clone)]
pub enum Caller {
    Operator,
    User(Arc<User>),
}

impl Caller {
    pub fn name(&self) -> &str {
        match self {
            Caller::Operator => "lepusctl",
            Caller::User(u) => &u.name,
        }
    }

    fn has_any(&self, tags: &[&str]) -> bool {
        match self {
            Caller::Operator => true,
            Caller::User(u) => tags.iter().any(|t| u.has_tag(t)),
        }
    }

    /// Users, permissions, vhosts, definitions: `administrator` only.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        match self.has_any(&["administrator"]) {
            true => Ok(()),
            false => Err(ApiError::not_authorised("Not administrator user")),
        }
    }

    /// Nodes and everything in every vhost: `administrator` or `monitoring`.
    pub fn require_monitor(&self) -> Result<(), ApiError> {
        match self.is_monitor() {
            true => Ok(()),
            false => Err(ApiError::not_authorised("Not monitor user")),
        }
    }

    /// One policy, and changing policies: `administrator` or `policymaker`.
    pub fn require_policymaker(&self) -> Result<(), ApiError> {
        match self.has_any(&["administrator", "policymaker"]) {
            true => Ok(()),
            // RabbitMQ's `is_authorized_policies` says no more than this.
            false => Err(ApiError::not_authorised(
                "User not authorised to access object",
            )),
        }
    }

    /// Monitors see every vhost's objects; other users only those of vhosts they may use.
    pub fn is_monitor(&self) -> bool {
        self.has_any(&["administrator", "monitoring"])
    }

    /// Whether the caller may see the objects of `vhost` (and use it, for management users).
    pub fn may_see(&self, broker: &Broker, vhost: &str) -> bool {
        match self {
            Caller::Operator => true,
            Caller::User(u) => {
                self.is_monitor() || broker.access.check_vhost(&u.name, vhost).is_ok()
            }
        }
    }

    /// Whether the caller may use `vhost` (declare, publish, get): permissions in it are
    /// needed even by administrators, as in RabbitMQ.
    pub fn may_use(&self, broker: &Broker, vhost: &str) -> bool {
        match self {
            Caller::Operator => true,
            Caller::User(u) => broker.access.check_vhost(&u.name, vhost).is_ok(),
        }
    }

    /// The vhost named in a path, if it exists (404) and the caller may see it (401).
    pub fn vhost(&self, broker: &Broker, name: &str) -> Result<Arc<VirtualHost>, ApiError> {
        let vhost = broker.vhost(name).ok_or_else(ApiError::not_found)?;
        match self.may_see(broker, name) {
            true => Ok(vhost),
            false => Err(vhost_refused()),
        }
    }

    /// The vhost named in a path, for a change to it: the caller must be allowed to use it.
    pub fn vhost_to_change(
        &self,
        broker: &Broker,
        name: &str,
    ) -> Result<Arc<VirtualHost>, ApiError> {
        let vhost = broker.vhost(name).ok_or_else(ApiError::not_found)?;
        match self.may_use(broker, name) {
            true => Ok(vhost),
            false => Err(vhost_refused()),
        }
    }

    /// Whether the caller's permissions in `vhost` allow `permission` on `resource`; the
    /// operator may do anything.
    pub fn authorize(
        &self,
        broker: &Broker,
        vhost: &str,
        resource: Resource<'_>,
        permission: Permission,
    ) -> Result<(), ApiError> {
        match self {
            Caller::Operator => Ok(()),
            Caller::User(u) => broker
                .access
                .check(&u.name, vhost, resource, permission)
                .map_err(ApiError::from_amqp),
        }
    }

    /// The user name permission checks run as; the operator is checked as nobody.
    pub fn user(&self) -> Option<&Arc<User>> {
        match self {
            Caller::Operator => None,
            Caller::User(u) => Some(u),
        }
    }
}

pub fn vhost_refused() -> ApiError {
    ApiError::not_authorised("User not authorised to access virtual host")
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Extension::<Caller>::from_request_parts(parts, state).await {
            Ok(Extension(caller)) => Ok(caller),
            Err(_) => Err(ApiError::not_authorised("Not management user")),
        }
    }
}

/// RabbitMQ's list parameters. Filtering and pages apply when `page` is given (as in
/// RabbitMQ 3.10, which ignores `name` otherwise); sorting and `columns` always.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ListQuery {
    pub page: Option<String>,
    pub page_size: Option<String>,
    pub name: Option<String>,
    pub use_regex: Option<String>,
    pub sort: Option<String>,
    pub sort_reverse: Option<String>,
    pub columns: Option<String>,
    /// `disable_stats=true`: leave message rates out, as RabbitMQ does.
    pub disable_stats: Option<String>,
}

pub type List = Query<ListQuery>;

fn truthy(v: &Option<String>) -> bool {
    v.as_deref() == Some("true")
}

impl ListQuery {
    pub fn stats(&self) -> bool {
        !truthy(&self.disable_stats)
    }
}

/// Answers a list the way RabbitMQ does: sorted, cut to `columns`, and paged into
/// `{total_count, item_count, filtered_count, page, page_size, page_count, items}` when
/// `page` is given.
pub fn list(mut items: Vec<Value>, q: &ListQuery) -> ApiResult {
    if let Some(sort) = sort_field(q) {
        items.sort_by(|a, b| compare(lookup(a, sort), lookup(b, sort)));
    }
    if truthy(&q.sort_reverse) {
        items.reverse();
    }
    let Some((page, page_size)) = page_of(q)? else {
        return Ok(Json(Value::Array(columns(items, q))).into_response());
    };
    let total = items.len();
    if let Some(matcher) = name_filter(q)? {
        items.retain(|item| matcher.matches(item.get("name").and_then(Value::as_str)));
    }
    let filtered = items.len();
    let page_count = page_count(filtered, page, page_size)?;
    let items: Vec<Value> = items
        .into_iter()
        .skip((page - 1) * page_size)
        .take(page_size)
        .collect();
    Ok(paged(
        items,
        q,
        (total, filtered),
        (page, page_size, page_count),
    ))
}

/// [`list`] for items that are turned into JSON only to be answered: with `page`, only the
/// page's items are, and when sorting by a field other than `name`, each item's value of
/// it (one item at a time). `name` must be the item's `"name"` in its JSON. A dashboard
/// paging through 100,000 queues made all of them JSON for each page, hundreds of
/// megabytes a request.
pub fn list_of<T>(
    items: Vec<T>,
    q: &ListQuery,
    name: impl Fn(&T) -> &str,
    to_json: impl Fn(&T) -> Value,
) -> ApiResult {
    let Some((page, page_size)) = page_of(q)? else {
        return list(items.iter().map(to_json).collect(), q);
    };
    let total = items.len();
    let mut keyed: Vec<(Option<Value>, T)> = match sort_field(q) {
        None => items.into_iter().map(|item| (None, item)).collect(),
        Some("name") => items
            .into_iter()
            .map(|item| (Some(Value::String(name(&item).to_owned())), item))
            .collect(),
        Some(sort) => items
            .into_iter()
            .map(|item| (lookup(&to_json(&item), sort).cloned(), item))
            .collect(),
    };
    if sort_field(q).is_some() {
        keyed.sort_by(|a, b| compare(a.0.as_ref(), b.0.as_ref()));
    }
    if truthy(&q.sort_reverse) {
        keyed.reverse();
    }
    if let Some(matcher) = name_filter(q)? {
        keyed.retain(|(_, item)| matcher.matches(Some(name(item))));
    }
    let filtered = keyed.len();
    let page_count = page_count(filtered, page, page_size)?;
    let items: Vec<Value> = keyed
        .iter()
        .skip((page - 1) * page_size)
        .take(page_size)
        .map(|(_, item)| to_json(item))
        .collect();
    Ok(paged(
        items,
        q,
        (total, filtered),
        (page, page_size, page_count),
    ))
}

fn sort_field(q: &ListQuery) -> Option<&str> {
    q.sort.as_deref().filter(|s| !s.is_empty())
}

/// `(page, page_size)` when `page` is given.
fn page_of(q: &ListQuery) -> Result<Option<(usize, usize)>, ApiError> {
    let Some(page) = &q.page else {
        return Ok(None);
    };
    let page: usize =
        page.parse().ok().filter(|&p| p >= 1).ok_or_else(|| {
            ApiError::bad_request(format!("page must be a positive integer: {page}"))
        })?;
    let page_size = match &q.page_size {
        None => DEFAULT_PAGE_SIZE,
        Some(s) => s
            .parse()
            .ok()
            .filter(|&n| (1..=MAX_PAGE_SIZE).contains(&n))
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "page_size must be between 1 and {MAX_PAGE_SIZE}: {s}"
                ))
            })?,
    };
    Ok(Some((page, page_size)))
}

fn name_filter(q: &ListQuery) -> Result<Option<NameFilter>, ApiError> {
    match q.name.as_deref().filter(|n| !n.is_empty()) {
        Some(name) => NameFilter::new(name, truthy(&q.use_regex)).map(Some),
        None => Ok(None),
    }
}

fn page_count(filtered: usize, page: usize, page_size: usize) -> Result<usize, ApiError> {
    let page_count = filtered.div_ceil(page_size);
    if page > page_count.max(1) {
        return Err(ApiError::bad_request(format!(
            "page out of range: {page} of {page_count}"
        )));
    }
    Ok(page_count)
}

/// A page: `(total, filtered)` counts and `(page, page_size, page_count)`.
fn paged(
    items: Vec<Value>,
    q: &ListQuery,
    (total, filtered): (usize, usize),
    (page, page_size, page_count): (usize, usize, usize),
) -> Response {
    Json(json!({
        "filtered_count": filtered,
        "item_count": items.len(),
        "items": columns(items, q),
        "page": page,
        "page_count": page_count,
        "page_size": page_size,
        "total_count": total,
    }))
    .into_response()
}

enum NameFilter {
    Substring(String),
    Regex(regex::Regex),
}

impl NameFilter {
    fn new(name: &str, regex: bool) -> Result<Self, ApiError> {
        if !regex {
            return Ok(NameFilter::Substring(name.to_lowercase()));
        }
        // Bounded like every pattern a client sends: the regex crate runs in linear time.
        regex::RegexBuilder::new(name)
            .case_insensitive(true)
            .size_limit(1 << 20)
            .build()
            .map(NameFilter::Regex)
            .map_err(|e| ApiError::bad_request(format!("invalid regular expression: {e}")))
    }

    fn matches(&self, name: Option<&str>) -> bool {
        let name = name.unwrap_or_default();
        match self {
            NameFilter::Substring(s) => name.to_lowercase().contains(s.as_str()),
            NameFilter::Regex(r) => r.is_match(name),
        }
    }
}

/// A value by dotted path (`message_stats.publish_details.rate`).
fn lookup<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |v, key| v.get(key))
}

/// Orders sort keys as Erlang orders terms (numbers, then atoms, then objects, arrays and
/// strings), a missing value first. It must be a total order whatever the values are:
/// `sort_by` may panic on one that is not, and values of a column can be of any type.
fn compare(a: Option<&Value>, b: Option<&Value>) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    fn rank(v: &Value) -> u8 {
        match v {
            Value::Number(_) => 0,
            Value::Null | Value::Bool(_) => 1,
            Value::Object(_) => 2,
            Value::Array(_) => 3,
            Value::String(_) => 4,
        }
    }
    match (a, b) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Less,
        (Some(_), None) => Ordering::Greater,
        (Some(x), Some(y)) => rank(x).cmp(&rank(y)).then_with(|| match (x, y) {
            (Value::Number(x), Value::Number(y)) => x
                .as_f64()
                .unwrap_or(0.0)
                .total_cmp(&y.as_f64().unwrap_or(0.0)),
            (Value::String(x), Value::String(y)) => x.cmp(y),
            // Atoms in alphabetical order: false, null, true.
            (Value::Null | Value::Bool(_), Value::Null | Value::Bool(_)) => {
                let atom = |v: &Value| match v {
                    Value::Bool(false) => 0,
                    Value::Null => 1,
                    _ => 2,
                };
                atom(x).cmp(&atom(y))
            }
            _ => Ordering::Equal,
        }),
    }
}

/// How many `columns` a list request may pick.
const MAX_COLUMNS: usize = 64;

/// Keeps only the `columns` asked for (dotted paths keep their parents' shape).
fn columns(items: Vec<Value>, q: &ListQuery) -> Vec<Value> {
    let Some(cols) = q.columns.as_deref().filter(|c| !c.is_empty()) else {
        return items;
    };
    // Each distinct path once, and no more than an item could have: every path costs a
    // walk of every item.
    let mut paths: Vec<&str> = Vec::new();
    for path in cols.split(',').map(str::trim) {
        if paths.len() < MAX_COLUMNS && !paths.contains(&path) {
            paths.push(path);
        }
    }
    items
        .into_iter()
        .map(|item| {
            let mut out = Map::new();
            for path in &paths {
                if let Some(v) = lookup(&item, path) {
                    insert_path(&mut out, path, v.clone());
                }
            }
            Value::Object(out)
        })
        .collect()
}

fn insert_path(out: &mut Map<String, Value>, path: &str, v: Value) {
    match path.split_once('.') {
        None => {
            out.insert(path.to_owned(), v);
        }
        Some((head, rest)) => {
            let child = out
                .entry(head.to_owned())
                .or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(child) = child {
                insert_path(child, rest, v);
            }
        }
    }
}

/// Waits until a change to durable definitions is on disk, as an AMQP declare waits before
/// its -ok: the API answers only for what survives a crash.
pub async fn durable(broker: &Broker, epoch: Option<u64>) -> Result<(), ApiError> {
    let Some(epoch) = epoch else {
        return Ok(());
    };
    let mut synced = broker.store.shared.subscribe();
    while *synced.borrow_and_update() < epoch {
        if synced.changed().await.is_err() {
            break;
        }
    }
    if broker.store.shared.failed(epoch) {
        return Err(ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            error: "internal_error",
            reason: "the change could not be written to disk".into(),
        });
    }
    Ok(())
}

/// Drops a trailing slash (`/api/users/` is `/api/users`), as RabbitMQ's router does;
/// clients such as rabbit-hole and amqpstorm ask with one.
pub fn normalise_path(mut req: Request) -> Request {
    let path = req.uri().path();
    if path.len() > 1 && path.ends_with('/') && !path.ends_with("//") {
        let trimmed = &path[..path.len() - 1];
        let rebuilt = match req.uri().query() {
            Some(q) => format!("{trimmed}?{q}"),
            None => trimmed.to_owned(),
        };
        if let Ok(uri) = rebuilt.parse::<Uri>() {
            *req.uri_mut() = uri;
        }
    }
    req
}

/// The vhosts the caller may see, by name.
pub fn visible_vhosts(broker: &Broker, caller: &Caller) -> Vec<Arc<VirtualHost>> {
    let mut vhosts: Vec<_> = broker
        .vhosts()
        .into_iter()
        .filter(|v| caller.may_see(broker, &v.name))
        .collect();
    vhosts.sort_by(|a, b| a.name.cmp(&b.name));
    vhosts
}

/// Arguments as JSON, as the API takes them, into an AMQP table.
pub fn arguments_of(json: Option<&Value>) -> Result<amq_protocol::types::FieldTable, ApiError> {
    match json {
        Some(v @ Value::Object(_)) => {
            crate::store::definitions::decode_arguments(v, "").map_err(ApiError::bad_request)
        }
        _ => Ok(amq_protocol::types::FieldTable::default()),
    }
}

/// The name a path gives the default exchange.
pub fn exchange_name(path_name: &str) -> &str {
    match path_name {
        "amq.default" => "",
        other => other,
    }
}

/// A request body that may be missing or empty, read as `{}` as RabbitMQ does.
pub fn body_or_empty<T: serde::de::DeserializeOwned + Default>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(e.to_string()))
}

/// A boolean as RabbitMQ's API takes it: `true`, or the string `"true"` (as rabbitmqadmin
/// sends every value).
pub fn lenient_bool<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(b)),
        Some(Value::String(s)) if s == "true" => Ok(Some(true)),
        Some(Value::String(s)) if s == "false" => Ok(Some(false)),
        Some(other) => Err(serde::de::Error::custom(format!("not a boolean: {other}"))),
    }
}

/// An integer as RabbitMQ's API takes it: a number, or a string of one.
pub fn lenient_int<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .map(Some)
            .ok_or_else(|| serde::de::Error::custom(format!("not an integer: {n}"))),
        Some(Value::String(s)) => s
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| serde::de::Error::custom(format!("not an integer: {s}"))),
        Some(other) => Err(serde::de::Error::custom(format!("not an integer: {other}"))),
    }
}

/// Formats milliseconds since the epoch as RabbitMQ does (`2026-12-02T07:58:12.129+00:00`).
pub fn timestamp(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}+00:00",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's
/// algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests;
