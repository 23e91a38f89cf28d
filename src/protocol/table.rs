//! Reading field-table values the way RabbitMQ reads arguments: any integer type is an
//! integer, long and short strings are both strings.

use amq_protocol::types::{AMQPValue, FieldTable};

/// Looks up `key` in a field table.
pub fn get<'a>(table: &'a FieldTable, key: &str) -> Option<&'a AMQPValue> {
    table
        .inner()
        .iter()
        .find(|(k, _)| k.as_str() == key)
        .map(|(_, v)| v)
}

/// The value as an integer, whatever integer type carried it.
pub fn as_int(value: &AMQPValue) -> Option<i64> {
    Some(match value {
        AMQPValue::ShortShortInt(v) => *v as i64,
        AMQPValue::ShortShortUInt(v) => *v as i64,
        AMQPValue::ShortInt(v) => *v as i64,
        AMQPValue::ShortUInt(v) => *v as i64,
        AMQPValue::LongInt(v) => *v as i64,
        AMQPValue::LongUInt(v) => *v as i64,
        AMQPValue::LongLongInt(v) => *v,
        AMQPValue::Timestamp(v) => *v as i64,
        _ => return None,
    })
}

/// The value as bytes, for long and short strings.
pub fn as_bytes(value: &AMQPValue) -> Option<&[u8]> {
    match value {
        AMQPValue::LongString(s) => Some(s.as_bytes()),
        AMQPValue::ShortString(s) => Some(s.as_str().as_bytes()),
        _ => None,
    }
}

/// The value as a string, for long and short strings holding UTF-8.
pub fn as_str(value: &AMQPValue) -> Option<&str> {
    as_bytes(value).and_then(|b| std::str::from_utf8(b).ok())
}

/// The value as a boolean.
pub fn as_bool(value: &AMQPValue) -> Option<bool> {
    match value {
        AMQPValue::Boolean(b) => Some(*b),
        _ => None,
    }
}

/// Formats a value as RabbitMQ does in reply texts: strings as they are, numbers and booleans
/// in Erlang's notation.
pub fn display(value: &AMQPValue) -> String {
    if let Some(i) = as_int(value) {
        return i.to_string();
    }
    match value {
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.as_str().to_owned(),
        AMQPValue::Float(f) => f.to_string(),
        AMQPValue::Double(f) => f.to_string(),
        AMQPValue::Void => "undefined".to_owned(),
        other => format!("{other:?}"),
    }
}

/// RabbitMQ's name for the type of a value, as its reply texts print it.
pub fn type_name(value: &AMQPValue) -> &'static str {
    match value {
        AMQPValue::Boolean(_) => "bool",
        AMQPValue::ShortShortInt(_) => "byte",
        AMQPValue::ShortShortUInt(_) => "unsignedbyte",
        AMQPValue::ShortInt(_) => "short",
        AMQPValue::ShortUInt(_) => "unsignedshort",
        AMQPValue::LongInt(_) => "signedint",
        AMQPValue::LongUInt(_) => "unsignedint",
        AMQPValue::LongLongInt(_) => "long",
        AMQPValue::Float(_) => "float",
        AMQPValue::Double(_) => "double",
        AMQPValue::DecimalValue(_) => "decimal",
        AMQPValue::ShortString(_) => "shortstr",
        AMQPValue::LongString(_) => "longstr",
        AMQPValue::FieldArray(_) => "array",
        AMQPValue::Timestamp(_) => "timestamp",
        AMQPValue::FieldTable(_) => "table",
        AMQPValue::ByteArray(_) => "binary",
        AMQPValue::Void => "void",
    }
}
