//! Users and the SASL mechanisms clients log in with: PLAIN and AMQPLAIN, as RabbitMQ
//! implements them.

use std::net::IpAddr;

use amq_protocol::types::parsing::parse_field_table;

use crate::protocol::table;

/// The mechanisms offered in Connection.Start, sorted and space-separated like RabbitMQ's.
pub const MECHANISMS: &str = "AMQPLAIN PLAIN";

/// A user that may log in.
#[derive(Debug, Clone)]
pub struct User {
    pub name: String,
    password: String,
    /// Like RabbitMQ's `loopback_users`: may only connect from a loopback address.
    pub loopback_only: bool,
}

impl User {
    pub fn new(name: &str, password: &str, loopback_only: bool) -> Self {
        User {
            name: name.to_owned(),
            password: password.to_owned(),
            loopback_only,
        }
    }

    /// Checks a password without leaking where it differs through timing.
    pub fn password_matches(&self, candidate: &str) -> bool {
        let (a, b) = (self.password.as_bytes(), candidate.as_bytes());
        let mut diff = a.len() ^ b.len();
        for i in 0..a.len().max(b.len()) {
            diff |= (a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0)) as usize;
        }
        diff == 0 && !candidate.is_empty()
    }

    /// Whether the user may connect from `peer`.
    pub fn may_connect_from(&self, peer: IpAddr) -> bool {
        !self.loopback_only || peer.is_loopback() || is_mapped_loopback(peer)
    }
}

fn is_mapped_loopback(peer: IpAddr) -> bool {
    match peer {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
        IpAddr::V4(_) => false,
    }
}

/// Why a Connection.StartOk response could not even be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponseError {
    UnknownMechanism(String),
    Malformed,
}

/// Extracts user name and password from a StartOk response.
pub fn parse_response(mechanism: &str, response: &[u8]) -> Result<(String, String), ResponseError> {
    match mechanism {
        "PLAIN" => parse_plain(response),
        "AMQPLAIN" => parse_amqplain(response),
        other => Err(ResponseError::UnknownMechanism(other.to_owned())),
    }
}

/// PLAIN: `\0user\0password`. Like RabbitMQ, an authorization identity is refused.
fn parse_plain(response: &[u8]) -> Result<(String, String), ResponseError> {
    let mut parts = response.split(|&b| b == 0);
    let (Some(authzid), Some(user), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ResponseError::Malformed);
    };
    if !authzid.is_empty() {
        return Err(ResponseError::Malformed);
    }
    let text = |b: &[u8]| String::from_utf8(b.to_vec()).map_err(|_| ResponseError::Malformed);
    Ok((text(user)?, text(password)?))
}

/// AMQPLAIN: a field table without its length prefix, with LOGIN and PASSWORD.
fn parse_amqplain(response: &[u8]) -> Result<(String, String), ResponseError> {
    let mut framed = Vec::with_capacity(response.len() + 4);
    framed.extend_from_slice(&(response.len() as u32).to_be_bytes());
    framed.extend_from_slice(response);
    let table = match parse_field_table(&framed[..]) {
        Ok(([], table)) => table,
        _ => return Err(ResponseError::Malformed),
    };
    let field = |name: &str| {
        table::get(&table, name)
            .and_then(table::as_str)
            .map(str::to_owned)
            .ok_or(ResponseError::Malformed)
    };
    Ok((field("LOGIN")?, field("PASSWORD")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_takes_user_and_password() {
        assert_eq!(
            parse_response("PLAIN", b"\0guest\0guest"),
            Ok(("guest".into(), "guest".into()))
        );
        assert_eq!(
            parse_response("PLAIN", b"authz\0guest\0guest"),
            Err(ResponseError::Malformed)
        );
        assert_eq!(
            parse_response("PLAIN", b"guestguest"),
            Err(ResponseError::Malformed)
        );
    }

    #[test]
    fn amqplain_is_a_table_without_length() {
        let mut t = amq_protocol::types::FieldTable::default();
        t.insert(
            "LOGIN".into(),
            amq_protocol::types::AMQPValue::LongString("u".into()),
        );
        t.insert(
            "PASSWORD".into(),
            amq_protocol::types::AMQPValue::LongString("p".into()),
        );
        let encoded = amq_protocol::types::generation::gen_field_table(&t)(Vec::new().into())
            .expect("in-memory encoding")
            .write;
        assert_eq!(
            parse_response("AMQPLAIN", &encoded[4..]),
            Ok(("u".into(), "p".into()))
        );
        assert_eq!(
            parse_response("AMQPLAIN", &encoded),
            Err(ResponseError::Malformed)
        );
    }

    #[test]
    fn guest_only_from_loopback() {
        let guest = User::new("guest", "guest", true);
        assert!(guest.may_connect_from("127.0.0.1".parse().unwrap()));
        assert!(guest.may_connect_from("::1".parse().unwrap()));
        assert!(!guest.may_connect_from("192.0.2.1".parse().unwrap()));
        assert!(guest.password_matches("guest"));
        assert!(!guest.password_matches("gues"));
    }
}
