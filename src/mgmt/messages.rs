//! Messages as JSON, both ways: what `get` returns and what `publish` takes.

use amq_protocol::protocol::BasicProperties;
use amq_protocol::types::ShortString;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use serde_json::{Map, Value, json};

use super::http::ApiError;
use crate::broker::queue::entry::QueueEntry;
use crate::store::definitions::{decode_arguments, encode_arguments};

/// A fetched message as RabbitMQ's `get` shows it. `base64` forces base64; otherwise a
/// UTF-8 payload is shown as a string. `truncate` cuts the payload to that many bytes.
pub fn message_json(entry: &QueueEntry, left: u32, payload: &[u8], as_text: bool) -> Value {
    let m = &entry.message;
    let (payload, encoding) = match std::str::from_utf8(payload) {
        Ok(s) if as_text => (s.to_owned(), "string"),
        _ => (BASE64.encode(payload), "base64"),
    };
    json!({
        "payload_bytes": m.body.len(),
        "redelivered": entry.redelivered,
        "exchange": String::from_utf8_lossy(&m.exchange),
        "routing_key": String::from_utf8_lossy(&m.routing_key),
        "message_count": left,
        "properties": properties_json(&m.properties),
        "payload": payload,
        "payload_encoding": encoding,
    })
}

/// How much of `shown` (what a `get` may show of a body) fits in `room` bytes of JSON, the
/// bytes of JSON that takes, and whether it is shown as text: as a string with its escapes
/// when `utf8` (the payload, as `truncate` cut it, is UTF-8) and `base64` was not asked
/// for, else as base64. All of it if it fits. `shown` need hold no more than `room` and a
/// character's bytes of a longer payload: what is cut is decided within them.
pub fn payload_fitting(shown: &[u8], utf8: bool, base64: bool, room: u64) -> (usize, u64, bool) {
    let as_base64 = |n: usize| (n as u64).div_ceil(3) * 4;
    let text = !base64 && utf8;
    if !text {
        let cut = match as_base64(shown.len()) <= room {
            true => shown.len(),
            false => usize::try_from(room / 4 * 3).map_or(shown.len(), |n| n.min(shown.len())),
        };
        return (cut, as_base64(cut), false);
    }
    let escaped = |b: u8| -> u64 {
        match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
            0..0x20 => 6,
            _ => 1,
        }
    };
    let mut json = 0u64;
    for (i, &b) in shown.iter().enumerate() {
        if json + escaped(b) > room {
            // Cut at a character's start, so that what is shown is still text.
            let mut cut = i;
            while cut > 0 && shown[cut] & 0xC0 == 0x80 {
                cut -= 1;
            }
            let json = shown[..cut].iter().map(|&b| escaped(b)).sum();
            return (cut, json, true);
        }
        json += escaped(b);
    }
    (shown.len(), json, true)
}

/// The properties as JSON; none at all is `[]`, as RabbitMQ writes an empty property list.
fn properties_json(raw: &[u8]) -> Value {
    let Some(p) = crate::protocol::properties::decode_all(raw) else {
        return json!([]);
    };
    let mut out = Map::new();
    let mut text = |key: &str, v: &Option<ShortString>| {
        if let Some(v) = v {
            out.insert(key.to_owned(), json!(v.as_str()));
        }
    };
    text("content_type", p.content_type());
    text("content_encoding", p.content_encoding());
    text("correlation_id", p.correlation_id());
    text("reply_to", p.reply_to());
    text("expiration", p.expiration());
    text("message_id", p.message_id());
    text("type", p.kind());
    text("user_id", p.user_id());
    text("app_id", p.app_id());
    text("cluster_id", p.cluster_id());
    if let Some(v) = p.delivery_mode() {
        out.insert("delivery_mode".into(), json!(v));
    }
    if let Some(v) = p.priority() {
        out.insert("priority".into(), json!(v));
    }
    if let Some(v) = p.timestamp() {
        out.insert("timestamp".into(), json!(v));
    }
    if let Some(h) = p.headers() {
        out.insert("headers".into(), encode_arguments(h).0);
    }
    match out.is_empty() {
        true => json!([]),
        false => Value::Object(out),
    }
}

/// Properties from the JSON `publish` takes, encoded as they travel.
pub fn properties_from_json(v: Option<&Value>) -> Result<Bytes, ApiError> {
    let mut p = BasicProperties::default();
    if let Some(Value::Object(map)) = v {
        for (key, value) in map {
            p = set_property(p, key, value)?;
        }
    }
    crate::protocol::properties::encode_all(&p)
        .ok_or_else(|| ApiError::bad_request("cannot encode the properties"))
}

fn set_property(p: BasicProperties, key: &str, value: &Value) -> Result<BasicProperties, ApiError> {
    let bad = || ApiError::bad_request(format!("invalid property {key}: {value}"));
    let text = || {
        value
            .as_str()
            .and_then(|s| ShortString::try_new(s.to_owned()).ok())
            .ok_or_else(bad)
    };
    let small = || {
        value
            .as_u64()
            .and_then(|n| u8::try_from(n).ok())
            .ok_or_else(bad)
    };
    Ok(match key {
        "content_type" => p.with_content_type(text()?),
        "content_encoding" => p.with_content_encoding(text()?),
        "correlation_id" => p.with_correlation_id(text()?),
        "reply_to" => p.with_reply_to(text()?),
        "expiration" => p.with_expiration(text()?),
        "message_id" => p.with_message_id(text()?),
        "type" => p.with_type(text()?),
        "user_id" => p.with_user_id(text()?),
        "app_id" => p.with_app_id(text()?),
        "cluster_id" => p.with_cluster_id(text()?),
        "delivery_mode" => p.with_delivery_mode(small()?),
        "priority" => p.with_priority(small()?),
        "timestamp" => p.with_timestamp(value.as_u64().ok_or_else(bad)?),
        "headers" => p.with_headers(decode_arguments(value, "").map_err(ApiError::bad_request)?),
        _ => return Err(ApiError::bad_request(format!("unknown property: {key}"))),
    })
}

/// The body `publish` takes: a string, or base64 with `payload_encoding` `base64`.
pub fn payload_from_json(payload: &str, encoding: &str) -> Result<Bytes, ApiError> {
    match encoding {
        "string" => Ok(Bytes::copy_from_slice(payload.as_bytes())),
        "base64" => BASE64
            .decode(payload)
            .map(Bytes::from)
            .map_err(|e| ApiError::bad_request(format!("payload is not base64: {e}"))),
        other => Err(ApiError::bad_request(format!(
            "unknown payload_encoding: {other}"
        ))),
    }
}
