//! The SASL mechanisms clients log in with: PLAIN and AMQPLAIN, as RabbitMQ implements them.

use amq_protocol::types::parsing::parse_field_table;

use crate::protocol::table;

/// The mechanisms Lepus has.
pub const MECHANISMS: [&str; 3] = ["AMQPLAIN", "EXTERNAL", "PLAIN"];

/// The `mechanisms` field of Connection.Start: the configured ones Lepus has, sorted and
/// space-separated like RabbitMQ's. EXTERNAL is offered on TLS connections, as RabbitMQ's
/// `rabbitmq_auth_mechanism_ssl` does, with or without a client certificate: without one,
/// choosing it is a refused login, a clearer error than a mechanism the client cannot find.
pub fn offered(configured: &[String], tls: bool) -> String {
    let mut names: Vec<&str> = MECHANISMS
        .into_iter()
        .filter(|m| configured.iter().any(|c| c == m))
        .filter(|m| *m != "EXTERNAL" || tls)
        .collect();
    names.sort_unstable();
    names.join(" ")
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
    if table::check_depth(&framed, table::MAX_TABLE_DEPTH).is_err() {
        return Err(ResponseError::Malformed);
    }
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
}
