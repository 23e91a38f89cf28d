//! Headers-exchange matching, as RabbitMQ 3.10 does it.
//!
//! A binding's arguments name headers and values; `x-match` says whether `all` or `any` of
//! them must match. Arguments starting with `x-` are ignored, except in the `all-with-x` and
//! `any-with-x` modes (`x-match` itself is always ignored). A void argument matches any value
//! of that header. Top-level values compare like Erlang's `==`: numbers by numeric value
//! whatever their type, strings and byte arrays by bytes.

use amq_protocol::types::{AMQPValue, FieldTable};

use crate::amqp_error;
use crate::protocol::error::AmqpResult;
use crate::protocol::table;

/// The four `x-match` modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XMatch {
    All,
    Any,
    AllWithX,
    AnyWithX,
}

/// A headers binding, ready to test messages against.
#[derive(Debug, Clone, PartialEq)]
pub struct HeadersMatch {
    mode: XMatch,
    /// The arguments that take part in matching, sorted by name.
    args: Vec<(String, AMQPValue)>,
}

impl HeadersMatch {
    /// Checks a binding's arguments and prepares them for matching. Errors carry RabbitMQ's
    /// texts for a bad `x-match`.
    pub fn new(arguments: &FieldTable) -> AmqpResult<Self> {
        let mode = match table::get(arguments, "x-match") {
            None => XMatch::All,
            Some(AMQPValue::LongString(s)) => match s.as_bytes() {
                b"all" => XMatch::All,
                b"any" => XMatch::Any,
                b"all-with-x" => XMatch::AllWithX,
                b"any-with-x" => XMatch::AnyWithX,
                other => {
                    return Err(amqp_error!(
                        PreconditionFailed,
                        "Invalid x-match field value {}; expected all, any, all-with-x, or any-with-x",
                        erlang_binary(other)
                    ));
                }
            },
            Some(other) => {
                return Err(amqp_error!(
                    PreconditionFailed,
                    "Invalid x-match field type {} (value {}); expected longstr",
                    table::type_name(other),
                    erlang_term(other)
                ));
            }
        };
        let with_x = matches!(mode, XMatch::AllWithX | XMatch::AnyWithX);
        let args = arguments
            .inner()
            .iter()
            .filter(|(k, _)| k.as_str() != "x-match")
            .filter(|(k, _)| with_x || !k.as_str().starts_with("x-"))
            .map(|(k, v)| (k.as_str().to_owned(), v.clone()))
            .collect();
        Ok(HeadersMatch { mode, args })
    }

    /// What matching a message against this binding costs a route's budget
    /// ([`super::topic::MAX_ROUTE_TOPIC_STATES`]): one per argument, and one for the binding.
    pub fn cost(&self) -> usize {
        self.args.len() + 1
    }

    /// Whether a message with these headers matches.
    pub fn matches(&self, headers: Option<&FieldTable>) -> bool {
        let header = |name: &str| headers.and_then(|h| table::get(h, name));
        let arg_matches = |(name, expected): &(String, AMQPValue)| match header(name) {
            None => false,
            Some(_) if matches!(expected, AMQPValue::Void) => true,
            Some(actual) => erlang_eq(expected, actual),
        };
        match self.mode {
            XMatch::All | XMatch::AllWithX => self.args.iter().all(arg_matches),
            XMatch::Any | XMatch::AnyWithX => self.args.iter().any(arg_matches),
        }
    }
}

/// A numeric view of a value, for Erlang's `==` between numbers of different types.
fn number(value: &AMQPValue) -> Option<f64> {
    if let Some(i) = table::as_int(value) {
        return Some(i as f64);
    }
    match value {
        AMQPValue::Float(f) => Some(*f as f64),
        AMQPValue::Double(d) => Some(*d),
        _ => None,
    }
}

/// Erlang's `==` on two decoded field values.
fn erlang_eq(a: &AMQPValue, b: &AMQPValue) -> bool {
    if let (Some(x), Some(y)) = (table::as_int(a), table::as_int(b)) {
        return x == y;
    }
    if let (Some(x), Some(y)) = (number(a), number(b)) {
        return x == y;
    }
    fn bytes(v: &AMQPValue) -> Option<&[u8]> {
        match v {
            AMQPValue::ByteArray(b) => Some(b.as_slice()),
            other => table::as_bytes(other),
        }
    }
    if let (Some(x), Some(y)) = (bytes(a), bytes(b)) {
        return x == y;
    }
    // Booleans, void, decimals, tables and arrays compare with their types.
    a == b
}

/// Erlang's printing of a binary: `<<"text">>`, or `<<>>` when empty.
fn erlang_binary(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        "<<>>".into()
    } else {
        format!("<<\"{}\">>", String::from_utf8_lossy(bytes))
    }
}

/// Erlang's printing of a decoded value, as RabbitMQ's texts show it.
fn erlang_term(value: &AMQPValue) -> String {
    match value {
        AMQPValue::LongString(s) => erlang_binary(s.as_bytes()),
        AMQPValue::ByteArray(b) => erlang_binary(b.as_slice()),
        AMQPValue::Void => "undefined".into(),
        AMQPValue::FieldArray(items) => {
            let inner: Vec<String> = items
                .as_slice()
                .iter()
                .map(|v| format!("{{{},{}}}", table::type_name(v), erlang_term(v)))
                .collect();
            format!("[{}]", inner.join(","))
        }
        other => table::display(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::types::ShortString;

    fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
        let mut t = FieldTable::default();
        for (k, v) in entries {
            t.insert(ShortString::from(*k), v.clone());
        }
        t
    }

    fn s(v: &str) -> AMQPValue {
        AMQPValue::LongString(v.into())
    }

    #[test]
    fn same_as_rabbitmq_all_without_arguments_matches_everything() {
        let m = HeadersMatch::new(&table(&[("x-match", s("all"))])).unwrap();
        assert!(m.matches(None));
        let m = HeadersMatch::new(&FieldTable::default()).unwrap();
        assert!(m.matches(Some(&FieldTable::default())));
    }

    #[test]
    fn same_as_rabbitmq_any_with_only_x_arguments_never_matches() {
        let m = HeadersMatch::new(&table(&[("x-match", s("any")), ("x-foo", s("bar"))])).unwrap();
        assert!(!m.matches(Some(&table(&[("x-foo", s("bar"))]))));
        let m = HeadersMatch::new(&table(&[("x-match", s("any-with-x")), ("x-foo", s("bar"))]))
            .unwrap();
        assert!(m.matches(Some(&table(&[("x-foo", s("bar"))]))));
    }

    #[test]
    fn same_as_rabbitmq_numbers_compare_by_value() {
        let m = HeadersMatch::new(&table(&[("a", AMQPValue::LongInt(1))])).unwrap();
        assert!(m.matches(Some(&table(&[("a", AMQPValue::LongLongInt(1))]))));
        assert!(m.matches(Some(&table(&[("a", AMQPValue::Double(1.0))]))));
        assert!(!m.matches(Some(&table(&[("a", s("1"))]))));
        assert!(!m.matches(Some(&table(&[("a", AMQPValue::Boolean(true))]))));
    }

    #[test]
    fn same_as_rabbitmq_void_matches_presence() {
        let m = HeadersMatch::new(&table(&[("a", AMQPValue::Void)])).unwrap();
        assert!(m.matches(Some(&table(&[("a", s("anything"))]))));
        assert!(!m.matches(Some(&table(&[("b", s("anything"))]))));
    }

    #[test]
    fn same_as_rabbitmq_bad_x_match_texts() {
        let e = HeadersMatch::new(&table(&[("x-match", s("ALL"))])).unwrap_err();
        assert_eq!(
            e.text,
            "PRECONDITION_FAILED - Invalid x-match field value <<\"ALL\">>; expected all, any, all-with-x, or any-with-x"
        );
        let e = HeadersMatch::new(&table(&[("x-match", AMQPValue::LongInt(1))])).unwrap_err();
        assert_eq!(
            e.text,
            "PRECONDITION_FAILED - Invalid x-match field type signedint (value 1); expected longstr"
        );
    }
}
