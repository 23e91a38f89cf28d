//! What every management endpoint shares: who is calling and what they may do, RabbitMQ's
//! error bodies, waiting for durable changes. The list parameters are in [`super::list`].

use std::sync::Arc;

use axum::extract::{FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::Uri;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth::User;
use crate::auth::access::{Permission, Resource};
use crate::broker::Broker;
use crate::broker::exchange::{Exchange, ExchangeKind};
use crate::broker::vhost::VirtualHost;
use crate::broker::vhost::checks::Check;
use crate::protocol::error::{AmqpError, ReplyCode};

/// An error answer with RabbitMQ's status and body (`{"error": …, "reason": …}`).
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    error: &'static str,
    /// Readable across `mgmt` (the list tests compare it).
    pub(super) reason: String,
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

    /// 500 for an answer the broker failed to make.
    pub fn internal(reason: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            error: "internal_server_error",
            reason: reason.into(),
        }
    }

    /// A request RabbitMQ runs over a channel of its own (a `get`): not found is a 404, a
    /// refusal a 401 with the channel's whole text, anything else a 400 with the code before
    /// the text ("405 RESOURCE_LOCKED - ..."), as RabbitMQ 3.10.8 answers.
    pub fn from_channel(e: AmqpError) -> Self {
        match e.code {
            ReplyCode::NotFound => ApiError::not_found(),
            ReplyCode::AccessRefused => ApiError::not_authorised(e.text),
            _ => ApiError::from_closed_channel(e),
        }
    }

    /// A publish refused: RabbitMQ learns it as its channel closing under the request, and
    /// answers every such error, a refusal too, as a 400 with the code before the text.
    pub fn from_closed_channel(e: AmqpError) -> Self {
        ApiError::bad_request(format!("{} {}", e.code.code(), e.text))
    }

    /// A broker operation refused, as RabbitMQ answers a declare, delete, purge or binding
    /// it asked of a channel directly: the AMQP reply code decides the status. The reason is
    /// the AMQP text without its `NAME - ` prefix, but a refusal says only "Access refused.".
    pub fn from_amqp(e: AmqpError) -> Self {
        let prefix = format!("{} - ", e.code.name());
        let reason = e.text.strip_prefix(&prefix).unwrap_or(&e.text).to_owned();
        match e.code {
            ReplyCode::NotFound => ApiError::not_found(),
            ReplyCode::AccessRefused => ApiError::not_authorised("Access refused."),
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

    /// Whose share this caller's requests take (`mgmt::user_shares`): the operator's is not
    /// that of a user who happens to be named `lepusctl`.
    pub fn share_key(&self) -> String {
        match self {
            Caller::Operator => "operator".to_owned(),
            Caller::User(u) => format!("user:{}", u.name),
        }
    }

    /// Who RabbitMQ says made what this caller makes (an exchange's
    /// `user_who_performed_action`): the user, or for the operator what RabbitMQ says of its
    /// CLI's imports.
    pub fn acting_user(&self) -> &str {
        match self {
            Caller::Operator => crate::broker::exchange::INTERNAL_USER,
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

    /// The vhost named in a policy's path. Same as RabbitMQ's `is_authorized_policies`: an
    /// administrator may see and change the policies of any vhost, a policymaker only of
    /// one it may use (the `monitoring` tag lets it see the vhost, not change it).
    pub fn vhost_for_policies(
        &self,
        broker: &Broker,
        name: &str,
    ) -> Result<Arc<VirtualHost>, ApiError> {
        let vhost = broker.vhost(name).ok_or_else(ApiError::not_found)?;
        match self.may_see_policies(broker, name) {
            true => Ok(vhost),
            false => Err(vhost_refused()),
        }
    }

    /// Whether the caller may see the policies of `vhost`: an administrator those of every
    /// vhost, anyone else (a monitor too) only those of vhosts it may use, as RabbitMQ's
    /// `is_authorized_vhost` and `filter_vhost` allow.
    pub fn may_see_policies(&self, broker: &Broker, vhost: &str) -> bool {
        self.has_any(&["administrator"]) || self.may_use(broker, vhost)
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
        self.check(broker, vhost, resource, permission)
            .map_err(ApiError::from_amqp)
    }

    /// [`Caller::authorize`] with the AMQP error, for the requests RabbitMQ answers with its
    /// channel's text (`get`, `publish`).
    pub fn check(
        &self,
        broker: &Broker,
        vhost: &str,
        resource: Resource<'_>,
        permission: Permission,
    ) -> Result<(), AmqpError> {
        match self {
            Caller::Operator => Ok(()),
            Caller::User(u) => broker.access.check(&u.name, vhost, resource, permission),
        }
    }

    /// Each of `checks` ([`crate::broker::vhost::checks`]), in order.
    pub fn authorize_all(
        &self,
        broker: &Broker,
        vhost: &str,
        checks: Vec<Check<'_>>,
    ) -> Result<(), ApiError> {
        self.check_all(broker, vhost, checks)
            .map_err(ApiError::from_amqp)
    }

    /// [`Caller::authorize_all`] with the AMQP error (a declare makes its checks itself).
    pub fn check_all(
        &self,
        broker: &Broker,
        vhost: &str,
        checks: Vec<Check<'_>>,
    ) -> Result<(), AmqpError> {
        checks
            .into_iter()
            .try_for_each(|(resource, permission)| self.check(broker, vhost, resource, permission))
    }

    /// For a topic exchange, whether the user's topic permissions allow this routing key;
    /// other exchanges have no topic checks (as [`crate::amqp::session`]'s).
    pub fn authorize_topic(
        &self,
        broker: &Broker,
        vhost: &str,
        exchange: &Exchange,
        routing_key: &str,
        permission: Permission,
    ) -> Result<(), ApiError> {
        match self {
            Caller::User(u) if exchange.kind == ExchangeKind::Topic => broker
                .access
                .check_topic(
                    &u.name,
                    vhost,
                    &exchange.name,
                    routing_key.as_bytes(),
                    permission,
                )
                .map_err(ApiError::from_amqp),
            _ => Ok(()),
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

/// The largest arguments the API takes, as JSON: what RabbitMQ's default `frame_max` lets a
/// declare or a binding carry over AMQP. Decoded, a value takes more room than its JSON (an
/// array of nulls, about seven times); bounded only by the body's size, one request made a
/// queue whose every listing built hundreds of megabytes.
pub const MAX_ARGUMENTS_JSON_BYTES: usize = 128 * 1024;

/// Arguments as JSON, as the API takes them, into an AMQP table.
pub fn arguments_of(json: Option<&Value>) -> Result<amq_protocol::types::FieldTable, ApiError> {
    match json {
        Some(v @ Value::Object(_)) => {
            if !crate::store::definitions::json_within(v, MAX_ARGUMENTS_JSON_BYTES) {
                return Err(ApiError::bad_request(format!(
                    "arguments longer than {MAX_ARGUMENTS_JSON_BYTES} bytes as JSON"
                )));
            }
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
    parse_json(body)
}

/// The most JSON values a request body holds (a definitions import aside). Parsed, a value
/// takes 32 bytes or more however few it took in the text (`[0,0,...]`, two bytes each): a
/// 20 MiB body of them became half a gigabyte of values, before any handler could weigh
/// them, for any user with access to a vhost. The bodies the API takes hold a few dozen
/// (a published payload is one string, however long).
pub const MAX_BODY_JSON_VALUES: usize = 16 * 1024;

/// `{`, named so that the brace is not read as a block's.
const OPEN_OBJECT: u8 = 0x7b;

/// A request body as JSON, refused before it is parsed if it holds more than
/// [`MAX_BODY_JSON_VALUES`] values.
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    check_json_values(body)?;
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(e.to_string()))
}

/// Refuses a body of more than [`MAX_BODY_JSON_VALUES`] JSON values, counted by one scan of
/// its text: an upper bound, one for the body, one for each `[` and `{` (their first
/// element or member) and one for each `,` (the next), outside strings. What is not JSON is
/// left to the parser, which stops at its first error, within what was counted.
pub fn check_json_values(body: &[u8]) -> Result<(), ApiError> {
    let mut values = 1usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in body {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b',' | OPEN_OBJECT => {
                values += 1;
                if values > MAX_BODY_JSON_VALUES {
                    return Err(ApiError::bad_request(format!(
                        "request body holds more than {MAX_BODY_JSON_VALUES} JSON values"
                    )));
                }
            }
            _ => {}
        }
    }
    Ok(())
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

/// Formats seconds since the epoch as RabbitMQ prints a certificate's expiry
/// (`2027-01-05 9:30:00`: Erlang's `~w` leaves the hour unpadded).
pub fn calendar_time(secs: i64) -> String {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y}-{m:02}-{d:02} {}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
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
