//! Just enough HTTP/1.1 to ask the admin socket one question per connection.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

use serde_json::Value;

/// Sends one request and returns the JSON answer (`null` for an empty one). An error status
/// becomes an error with the broker's reason.
pub fn request(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Result<Value, String> {
    let (status, value) = call(socket, method, path, body, &[])?;
    if status >= 400 {
        let reason = value
            .get("reason")
            .and_then(Value::as_str)
            .unwrap_or("failed");
        return Err(format!("{reason} (HTTP {status})"));
    }
    Ok(value)
}

/// Sends one request with extra headers and returns the status and the JSON answer; only a
/// broker that cannot be reached, or an answer that is not HTTP, is an error.
pub fn call(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<Value>,
    headers: &[(&str, &str)],
) -> Result<(u16, Value), String> {
    let mut stream = UnixStream::connect(socket).map_err(|e| {
        format!(
            "cannot reach the broker at {}: {e} (is it running, and is this its data directory?)",
            socket.display()
        )
    })?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let extra: String = headers
        .iter()
        .map(|(name, value)| format!("{name}: {value}\r\n"))
        .collect();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("cannot send the request: {e}"))?;
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .map_err(|e| format!("cannot read the answer: {e}"))?;
    let text = String::from_utf8_lossy(&answer);
    let (head, payload) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or("the broker sent no HTTP status")?;
    let payload = dechunk(head, payload);
    let value: Value = if payload.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&payload)
            .map_err(|e| format!("the broker's answer is not JSON: {e}"))?
    };
    Ok((status, value))
}

/// The body of a response sent with `Transfer-Encoding: chunked`, joined.
fn dechunk(head: &str, payload: &str) -> String {
    if !head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return payload.to_owned();
    }
    let mut out = String::new();
    let mut rest = payload;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}
