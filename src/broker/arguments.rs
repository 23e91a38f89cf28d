//! Queue and exchange arguments: validation on first declare and equivalence on redeclare,
//! with RabbitMQ 3.10's rules and texts.
//!
//! RabbitMQ validates a fixed list of `x-` arguments when a queue is created, in a fixed order,
//! and accepts anything else. A redeclare does not validate at all; it compares the same list
//! of arguments with the queue's, treating all integer types as one and ignoring the rest.

use amq_protocol::types::{AMQPValue, FieldTable};

use crate::amqp_error;
use crate::protocol::error::{AmqpError, AmqpResult};
use crate::protocol::table;

/// The largest TTL or expiry RabbitMQ accepts: ten years in milliseconds.
pub const MAX_TTL_MS: i64 = 315_360_000_000;

/// Arguments compared on queue redeclare, in RabbitMQ's order.
const QUEUE_EQUIVALENCE_KEYS: &[&str] = &[
    "x-expires",
    "x-message-ttl",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-max-length",
    "x-max-length-bytes",
    "x-max-priority",
    "x-overflow",
    "x-queue-mode",
    "x-queue-version",
    "x-single-active-consumer",
    "x-queue-type",
    "x-queue-master-locator",
];

/// Arguments compared on a quorum queue's redeclare, in RabbitMQ's order (checked on 3.10.8).
const QUORUM_EQUIVALENCE_KEYS: &[&str] = &[
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-dead-letter-strategy",
    "x-expires",
    "x-max-length",
    "x-max-length-bytes",
    "x-max-in-memory-length",
    "x-max-in-memory-bytes",
    "x-overflow",
    "x-single-active-consumer",
    "x-queue-type",
    "x-quorum-initial-group-size",
    "x-delivery-limit",
    "x-message-ttl",
    "x-queue-leader-locator",
];

/// Arguments of quorum and stream queues, refused on classic queues.
const OTHER_QUEUE_TYPE_KEYS: &[&str] = &[
    "x-delivery-limit",
    "x-max-age",
    "x-max-in-memory-length",
    "x-max-in-memory-bytes",
    "x-dead-letter-strategy",
    "x-quorum-initial-group-size",
    "x-stream-max-segment-size-bytes",
    "x-initial-cluster-size",
    "x-queue-leader-locator",
];

/// `queue 'q' in vhost '/'`, as RabbitMQ names a queue in its texts.
pub fn queue_desc(name: &str, vhost: &str) -> String {
    format!("queue '{name}' in vhost '{vhost}'")
}

/// `exchange 'x' in vhost '/'`.
pub fn exchange_desc(name: &str, vhost: &str) -> String {
    format!("exchange '{name}' in vhost '{vhost}'")
}

/// Integer argument types, as RabbitMQ's `?INTEGER_ARG_TYPES`.
fn integer(value: &AMQPValue) -> Option<i64> {
    match value {
        AMQPValue::Timestamp(_) => None,
        other => table::as_int(other),
    }
}

fn invalid_arg(key: &str, desc: &str, reason: impl std::fmt::Display) -> AmqpError {
    amqp_error!(
        PreconditionFailed,
        "invalid arg '{}' for {}: {}",
        key,
        desc,
        reason
    )
}

fn expected_integer(value: &AMQPValue) -> String {
    format!("\"expected integer, got {}\"", table::type_name(value))
}

/// A non-negative integer no larger than `max`; `positive` also refuses zero.
fn check_int(
    key: &str,
    value: &AMQPValue,
    desc: &str,
    positive: bool,
    max: Option<i64>,
) -> AmqpResult<i64> {
    let n = integer(value).ok_or_else(|| invalid_arg(key, desc, expected_integer(value)))?;
    if n < 0 {
        return Err(invalid_arg(key, desc, format!("{{value_negative,{n}}}")));
    }
    if positive && n == 0 {
        return Err(invalid_arg(key, desc, "{value_zero,0}"));
    }
    if let Some(max) = max
        && n > max
    {
        let tag = if key == "x-max-priority" {
            "max_value_exceeded"
        } else {
            "value_too_large"
        };
        return Err(invalid_arg(key, desc, format!("{{{tag},{n}}}")));
    }
    Ok(n)
}

fn check_string<'a>(key: &str, value: &'a AMQPValue, desc: &str) -> AmqpResult<&'a [u8]> {
    table::as_bytes(value).ok_or_else(|| {
        invalid_arg(
            key,
            desc,
            format!("{{unacceptable_type,{}}}", table::type_name(value)),
        )
    })
}

/// Checks the arguments of a queue being created, in RabbitMQ's order.
pub fn validate_queue_arguments(args: &FieldTable, desc: &str) -> AmqpResult<()> {
    let get = |key: &str| table::get(args, key);
    // The channel checks the dead-letter exchange's type before anything else.
    if let Some(v) = get("x-dead-letter-exchange")
        && table::as_bytes(v).is_none()
    {
        return Err(amqp_error!(
            PreconditionFailed,
            "invalid type '{}' for arg 'x-dead-letter-exchange' in {}",
            table::type_name(v),
            desc
        ));
    }
    if let Some(v) = get("x-dead-letter-exchange") {
        not_utf8_refused(v, "x-dead-letter-exchange", desc)?;
    }
    if let Some(v) = get("x-queue-type") {
        check_queue_type(v, desc)?;
        if table::as_bytes(v) == Some(b"quorum".as_slice()) {
            return validate_quorum_arguments(args, desc);
        }
    }
    if let Some(v) = get("x-expires") {
        check_int("x-expires", v, desc, true, Some(MAX_TTL_MS))?;
    }
    if let Some(v) = get("x-message-ttl") {
        check_int("x-message-ttl", v, desc, false, Some(MAX_TTL_MS))?;
    }
    if let Some(v) = get("x-dead-letter-routing-key") {
        check_string("x-dead-letter-routing-key", v, desc)?;
        if get("x-dead-letter-exchange").is_none() {
            return Err(invalid_arg(
                "x-dead-letter-routing-key",
                desc,
                "routing_key_but_no_dlx_defined",
            ));
        }
    }
    if let Some(v) = get("x-max-length") {
        check_int("x-max-length", v, desc, false, None)?;
    }
    if let Some(v) = get("x-max-length-bytes") {
        check_int("x-max-length-bytes", v, desc, false, None)?;
    }
    if let Some(v) = get("x-max-priority") {
        check_int("x-max-priority", v, desc, false, Some(255))?;
    }
    if let Some(v) = get("x-overflow") {
        let mode = check_string("x-overflow", v, desc)?;
        if !matches!(
            mode,
            b"drop-head" | b"reject-publish" | b"reject-publish-dlx"
        ) {
            return Err(invalid_arg("x-overflow", desc, "invalid_overflow"));
        }
    }
    if let Some(v) = get("x-queue-mode") {
        let mode = check_string("x-queue-mode", v, desc)?;
        if !matches!(mode, b"default" | b"lazy") {
            return Err(invalid_arg(
                "x-queue-mode",
                desc,
                format!(
                    "\"unsupported queue mode '{}'\"",
                    String::from_utf8_lossy(mode)
                ),
            ));
        }
    }
    if let Some(v) = get("x-queue-version") {
        let n = check_int("x-queue-version", v, desc, false, None)?;
        if !(1..=2).contains(&n) {
            return Err(invalid_arg(
                "x-queue-version",
                desc,
                format!("\"unsupported queue version '{n}'\""),
            ));
        }
    }
    if let Some(v) = get("x-single-active-consumer")
        && table::as_bool(v).is_none()
    {
        return Err(invalid_arg(
            "x-single-active-consumer",
            desc,
            format!("{{unacceptable_type,{}}}", table::type_name(v)),
        ));
    }
    for key in args.inner().keys() {
        if OTHER_QUEUE_TYPE_KEYS.contains(&key.as_str()) {
            return Err(amqp_error!(
                PreconditionFailed,
                "invalid arg '{}' for {} of queue type rabbit_classic_queue",
                key.as_str(),
                desc
            ));
        }
    }
    Ok(())
}

/// Arguments of classic and stream queues, refused on quorum queues.
const NOT_QUORUM_KEYS: &[&str] = &[
    "x-max-priority",
    "x-queue-mode",
    "x-queue-version",
    "x-queue-master-locator",
    "x-max-age",
    "x-stream-max-segment-size-bytes",
    "x-initial-cluster-size",
];

/// A quorum queue's arguments: RabbitMQ checks the values of those quorum queues know, in
/// its fixed order, then refuses arguments of the other queue types.
fn validate_quorum_arguments(args: &FieldTable, desc: &str) -> AmqpResult<()> {
    let get = |key: &str| table::get(args, key);
    if let Some(v) = get("x-expires") {
        check_int("x-expires", v, desc, true, Some(MAX_TTL_MS))?;
    }
    if let Some(v) = get("x-message-ttl") {
        check_int("x-message-ttl", v, desc, false, Some(MAX_TTL_MS))?;
    }
    if let Some(v) = get("x-dead-letter-routing-key") {
        check_string("x-dead-letter-routing-key", v, desc)?;
        if get("x-dead-letter-exchange").is_none() {
            return Err(invalid_arg(
                "x-dead-letter-routing-key",
                desc,
                "routing_key_but_no_dlx_defined",
            ));
        }
    }
    if let Some(v) = get("x-dead-letter-strategy") {
        check_one_of(
            "x-dead-letter-strategy",
            v,
            desc,
            &[b"at-least-once", b"at-most-once"],
            "invalid_dlx_strategy",
        )?;
    }
    for key in [
        "x-max-length",
        "x-max-length-bytes",
        "x-max-in-memory-length",
        "x-max-in-memory-bytes",
    ] {
        if let Some(v) = get(key) {
            check_int(key, v, desc, false, None)?;
        }
    }
    if let Some(v) = get("x-overflow") {
        let mode = check_string("x-overflow", v, desc)?;
        if !matches!(
            mode,
            b"drop-head" | b"reject-publish" | b"reject-publish-dlx"
        ) {
            return Err(invalid_arg("x-overflow", desc, "invalid_overflow"));
        }
    }
    if let Some(v) = get("x-single-active-consumer")
        && table::as_bool(v).is_none()
    {
        return Err(invalid_arg(
            "x-single-active-consumer",
            desc,
            format!("{{unacceptable_type,{}}}", table::type_name(v)),
        ));
    }
    // Accepted and kept (a redeclare must match them) but without effect on one node.
    if let Some(v) = get("x-quorum-initial-group-size") {
        check_int("x-quorum-initial-group-size", v, desc, true, None)?;
    }
    if let Some(v) = get("x-queue-leader-locator") {
        check_one_of(
            "x-queue-leader-locator",
            v,
            desc,
            &[b"client-local", b"balanced", b"random", b"least-leaders"],
            "invalid_queue_locator_arg",
        )?;
    }
    for key in args.inner().keys() {
        if NOT_QUORUM_KEYS.contains(&key.as_str()) {
            return Err(amqp_error!(
                PreconditionFailed,
                "invalid arg '{}' for {} of queue type rabbit_quorum_queue",
                key.as_str(),
                desc
            ));
        }
    }
    Ok(())
}

/// A long string that is one of `allowed`: RabbitMQ takes no other type (a byte array is
/// `{unacceptable_type,binary}`), and refuses other values with `reason`.
fn check_one_of(
    key: &str,
    value: &AMQPValue,
    desc: &str,
    allowed: &[&[u8]],
    reason: &str,
) -> AmqpResult<()> {
    let AMQPValue::LongString(s) = value else {
        return Err(invalid_arg(
            key,
            desc,
            format!("{{unacceptable_type,{}}}", table::type_name(value)),
        ));
    };
    if allowed.contains(&s.as_bytes()) {
        Ok(())
    } else {
        Err(invalid_arg(key, desc, reason))
    }
}

fn check_queue_type(value: &AMQPValue, desc: &str) -> AmqpResult<()> {
    let kind = check_string("x-queue-type", value, desc)?;
    match kind {
        b"classic" | b"quorum" => Ok(()),
        other => Err(invalid_arg(
            "x-queue-type",
            desc,
            format!(
                "\"unsupported queue type '{}'\"",
                String::from_utf8_lossy(other)
            ),
        )),
    }
}

/// Erlang's rendering of a value inside RabbitMQ's equivalence texts.
fn render(value: &AMQPValue) -> String {
    match value {
        AMQPValue::Float(f) => erlang_float(*f as f64),
        AMQPValue::Double(d) => erlang_float(*d),
        other => table::display(other),
    }
}

fn erlang_float(f: f64) -> String {
    if f.is_finite() && f.fract() == 0.0 && f.abs() < 1e16 {
        format!("{f:.1}")
    } else {
        f.to_string()
    }
}

/// Values RabbitMQ treats as equal on redeclare: same type class, same value.
fn equivalent(a: &AMQPValue, b: &AMQPValue) -> bool {
    if let (Some(x), Some(y)) = (integer(a), integer(b)) {
        return x == y;
    }
    let float = |v: &AMQPValue| match v {
        AMQPValue::Float(f) => Some(*f as f64),
        AMQPValue::Double(d) => Some(*d),
        _ => None,
    };
    if let (Some(x), Some(y)) = (float(a), float(b)) {
        return x == y;
    }
    if let (Some(x), Some(y)) = (table::as_bytes(a), table::as_bytes(b)) {
        return x == y;
    }
    a == b
}

/// RabbitMQ's `inequivalent arg` error.
pub fn inequivalent(
    key: &str,
    desc: &str,
    received: Option<&AMQPValue>,
    current: Option<&AMQPValue>,
) -> AmqpError {
    let show = |v: Option<&AMQPValue>, other: Option<&AMQPValue>| match (v, other) {
        (None, _) => "none".to_owned(),
        (Some(v), None) => format!(
            "the value '{}' of type '{}'",
            render(v),
            table::type_name(v)
        ),
        (Some(v), Some(_)) => format!("'{}'", render(v)),
    };
    amqp_error!(
        PreconditionFailed,
        "inequivalent arg '{}' for {}: received {} but current is {}",
        key,
        desc,
        show(received, current),
        show(current, received)
    )
}

/// An `inequivalent arg` error for a boolean property such as `durable`.
pub fn inequivalent_flag(key: &str, desc: &str, received: bool, current: bool) -> AmqpError {
    amqp_error!(
        PreconditionFailed,
        "inequivalent arg '{}' for {}: received '{}' but current is '{}'",
        key,
        desc,
        received,
        current
    )
}

/// Compares a redeclare's arguments with the queue's: the list its type compares (a quorum
/// queue's includes its delivery limit and the arguments without effect on one node).
pub fn assert_queue_equivalence(
    current: &FieldTable,
    received: &FieldTable,
    desc: &str,
) -> AmqpResult<()> {
    let quorum = table::get(current, "x-queue-type")
        .and_then(table::as_bytes)
        .is_some_and(|t| t == b"quorum");
    let keys = if quorum {
        QUORUM_EQUIVALENCE_KEYS
    } else {
        QUEUE_EQUIVALENCE_KEYS
    };
    for key in keys {
        let c = table::get(current, key);
        let r = table::get(received, key);
        let same = match (c, r) {
            (None, None) => true,
            (Some(a), Some(b)) => equivalent(a, b),
            (Some(v), None) | (None, Some(v)) => {
                *key == "x-queue-type" && table::as_bytes(v) == Some(b"classic")
            }
        };
        if !same {
            return Err(inequivalent(key, desc, r, c));
        }
    }
    Ok(())
}

/// What a decoded value of kept arguments takes besides its encoded bytes (measured: 133
/// bytes per boolean of a 4,000-value table, key included, resident).
const KEPT_VALUE_BYTES: usize = 128;

/// What the broker keeps for arguments it holds decoded (a queue's, an exchange's, or a
/// durable object's in the definitions), charged to the topology budget.
pub fn kept_bytes(args: &FieldTable) -> usize {
    table::encode(args).len() + table::value_count(args) * KEPT_VALUE_BYTES
}

/// What the durable definitions keep for a durable queue, exchange or binding besides its
/// names and arguments (measured: about 1,000 bytes per durable binding, resident).
pub const DEFINITION_KEPT_BYTES: usize = 1024;

/// Refuses arguments (of `what`, a queue, an exchange or a binding) holding more values than
/// the broker keeps for an object (`table::MAX_KEPT_TABLE_VALUES`).
pub fn check_kept_size(args: &FieldTable, what: impl FnOnce() -> String) -> AmqpResult<()> {
    if table::values_within(args, table::MAX_KEPT_TABLE_VALUES) {
        return Ok(());
    }
    Err(amqp_error!(
        PreconditionFailed,
        "arguments of {} hold more than {} values",
        what(),
        table::MAX_KEPT_TABLE_VALUES
    ))
}

/// Checks an exchange's `alternate-exchange` argument when it is created.
pub fn validate_exchange_arguments(args: &FieldTable, desc: &str) -> AmqpResult<()> {
    if let Some(v) = table::get(args, "alternate-exchange") {
        if !matches!(v, AMQPValue::LongString(_)) {
            return Err(amqp_error!(
                PreconditionFailed,
                "invalid type '{}' for arg 'alternate-exchange' in {}",
                table::type_name(v),
                desc
            ));
        }
        not_utf8_refused(v, "alternate-exchange", desc)?;
    }
    Ok(())
}

/// An exchange named in an argument (a dead-letter or alternate exchange) must be UTF-8, as
/// every exchange name here is: the permission checks on it (write, for what is sent there)
/// are made on the name as text, and a name they could not read would be a name nobody's
/// permissions were checked on. RabbitMQ takes any bytes (see `conformance/DIFFERENCES.md`).
fn not_utf8_refused(value: &AMQPValue, key: &str, desc: &str) -> AmqpResult<()> {
    match table::as_bytes(value) {
        Some(name) if std::str::from_utf8(name).is_err() => Err(amqp_error!(
            PreconditionFailed,
            "invalid arg '{}' for {}: the exchange name is not UTF-8",
            key,
            desc
        )),
        _ => Ok(()),
    }
}

/// Compares the one exchange argument RabbitMQ checks on redeclare.
pub fn assert_exchange_equivalence(
    current: &FieldTable,
    received: &FieldTable,
    desc: &str,
) -> AmqpResult<()> {
    let key = "alternate-exchange";
    let c = table::get(current, key);
    let r = table::get(received, key);
    let same = match (c, r) {
        (None, None) => true,
        (Some(a), Some(b)) => equivalent(a, b),
        _ => false,
    };
    if same {
        Ok(())
    } else {
        Err(inequivalent(key, desc, r, c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::types::ShortString;

    fn args(entries: &[(&str, AMQPValue)]) -> FieldTable {
        let mut t = FieldTable::default();
        for (k, v) in entries {
            t.insert(ShortString::from(*k), v.clone());
        }
        t
    }

    const Q: &str = "queue 'q' in vhost '/'";

    #[test]
    fn same_as_rabbitmq_validation_texts() {
        let cases = [
            (
                args(&[("x-expires", AMQPValue::LongInt(0))]),
                "PRECONDITION_FAILED - invalid arg 'x-expires' for queue 'q' in vhost '/': {value_zero,0}",
            ),
            (
                args(&[("x-message-ttl", AMQPValue::LongInt(-1))]),
                "PRECONDITION_FAILED - invalid arg 'x-message-ttl' for queue 'q' in vhost '/': {value_negative,-1}",
            ),
            (
                args(&[("x-max-length", AMQPValue::LongString("5".into()))]),
                "PRECONDITION_FAILED - invalid arg 'x-max-length' for queue 'q' in vhost '/': \"expected integer, got longstr\"",
            ),
            (
                args(&[("x-max-priority", AMQPValue::LongInt(256))]),
                "PRECONDITION_FAILED - invalid arg 'x-max-priority' for queue 'q' in vhost '/': {max_value_exceeded,256}",
            ),
            (
                args(&[("x-overflow", AMQPValue::LongString("foo".into()))]),
                "PRECONDITION_FAILED - invalid arg 'x-overflow' for queue 'q' in vhost '/': invalid_overflow",
            ),
            (
                args(&[(
                    "x-dead-letter-routing-key",
                    AMQPValue::LongString("k".into()),
                )]),
                "PRECONDITION_FAILED - invalid arg 'x-dead-letter-routing-key' for queue 'q' in vhost '/': routing_key_but_no_dlx_defined",
            ),
            (
                args(&[("x-dead-letter-exchange", AMQPValue::LongInt(1))]),
                "PRECONDITION_FAILED - invalid type 'signedint' for arg 'x-dead-letter-exchange' in queue 'q' in vhost '/'",
            ),
            // Not UTF-8: no permission check could have read it (see `not_utf8_refused`).
            (
                args(&[(
                    "x-dead-letter-exchange",
                    AMQPValue::LongString(b"victim\xff"[..].into()),
                )]),
                "PRECONDITION_FAILED - invalid arg 'x-dead-letter-exchange' for queue 'q' in vhost '/': the exchange name is not UTF-8",
            ),
        ];
        for (a, text) in cases {
            assert_eq!(validate_queue_arguments(&a, Q).unwrap_err().text, text);
        }
        assert!(validate_queue_arguments(&args(&[("x-foo", AMQPValue::Boolean(true))]), Q).is_ok());
    }

    fn quorum(entries: &[(&str, AMQPValue)]) -> FieldTable {
        let mut t = args(entries);
        t.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        t
    }

    fn text(s: &str) -> AMQPValue {
        AMQPValue::LongString(s.into())
    }

    /// Observed on RabbitMQ 3.10.8: the arguments only quorum queues know are checked, in
    /// its order (the dead-letter strategy after the routing key and before the lengths;
    /// the group size and leader locator after the overflow mode).
    #[test]
    fn same_as_rabbitmq_quorum_queue_validation_texts() {
        let invalid = |key: &str, reason: &str| {
            format!(
                "PRECONDITION_FAILED - invalid arg '{key}' for queue 'q' in vhost '/': {reason}"
            )
        };
        let cases = [
            (
                quorum(&[("x-dead-letter-strategy", text("AT-LEAST-ONCE"))]),
                invalid("x-dead-letter-strategy", "invalid_dlx_strategy"),
            ),
            (
                quorum(&[(
                    "x-dead-letter-strategy",
                    AMQPValue::ByteArray(b"at-least-once".to_vec().into()),
                )]),
                invalid("x-dead-letter-strategy", "{unacceptable_type,binary}"),
            ),
            (
                quorum(&[
                    ("x-dead-letter-strategy", text("bogus")),
                    ("x-max-length", AMQPValue::LongInt(-1)),
                    ("x-overflow", text("bogus")),
                ]),
                invalid("x-dead-letter-strategy", "invalid_dlx_strategy"),
            ),
            (
                quorum(&[
                    ("x-max-in-memory-length", AMQPValue::LongInt(-1)),
                    ("x-overflow", text("bogus")),
                ]),
                invalid("x-max-in-memory-length", "{value_negative,-1}"),
            ),
            (
                quorum(&[("x-max-in-memory-bytes", text("x"))]),
                invalid("x-max-in-memory-bytes", "\"expected integer, got longstr\""),
            ),
            (
                quorum(&[
                    ("x-quorum-initial-group-size", AMQPValue::LongInt(0)),
                    ("x-queue-leader-locator", text("bogus")),
                ]),
                invalid("x-quorum-initial-group-size", "{value_zero,0}"),
            ),
            (
                quorum(&[
                    ("x-single-active-consumer", AMQPValue::LongInt(5)),
                    ("x-quorum-initial-group-size", AMQPValue::LongInt(0)),
                ]),
                invalid("x-single-active-consumer", "{unacceptable_type,signedint}"),
            ),
            (
                quorum(&[("x-queue-leader-locator", text("min-masters"))]),
                invalid("x-queue-leader-locator", "invalid_queue_locator_arg"),
            ),
            (
                quorum(&[("x-queue-leader-locator", AMQPValue::LongInt(5))]),
                invalid("x-queue-leader-locator", "{unacceptable_type,signedint}"),
            ),
        ];
        for (a, expected) in cases {
            assert_eq!(validate_queue_arguments(&a, Q).unwrap_err().text, expected);
        }
        for ok in [
            ("x-dead-letter-strategy", text("at-most-once")),
            ("x-queue-leader-locator", text("least-leaders")),
            ("x-quorum-initial-group-size", AMQPValue::LongInt(3)),
            // Not checked when declared, as in RabbitMQ 3.10.
            ("x-delivery-limit", text("x")),
        ] {
            assert!(validate_queue_arguments(&quorum(&[ok]), Q).is_ok());
        }
    }

    /// Observed on RabbitMQ 3.10.8: a quorum queue's redeclare compares its own list, in its
    /// own order (the dead-letter arguments first, the leader locator last).
    #[test]
    fn same_as_rabbitmq_quorum_queue_equivalence() {
        let cur = quorum(&[
            ("x-delivery-limit", AMQPValue::LongInt(3)),
            ("x-dead-letter-strategy", text("at-least-once")),
            ("x-queue-leader-locator", text("balanced")),
        ]);
        let new = quorum(&[
            ("x-delivery-limit", AMQPValue::LongInt(4)),
            ("x-queue-leader-locator", text("client-local")),
        ]);
        assert_eq!(
            assert_queue_equivalence(&cur, &new, Q).unwrap_err().text,
            "PRECONDITION_FAILED - inequivalent arg 'x-dead-letter-strategy' for queue 'q' in vhost '/': received none but current is the value 'at-least-once' of type 'longstr'"
        );
        let new = quorum(&[
            ("x-delivery-limit", AMQPValue::ShortShortInt(4)),
            ("x-dead-letter-strategy", text("at-least-once")),
            ("x-queue-leader-locator", text("client-local")),
        ]);
        assert_eq!(
            assert_queue_equivalence(&cur, &new, Q).unwrap_err().text,
            "PRECONDITION_FAILED - inequivalent arg 'x-delivery-limit' for queue 'q' in vhost '/': received '4' but current is '3'"
        );
        assert!(assert_queue_equivalence(&cur, &cur, Q).is_ok());
        // The classic list is not compared: an argument quorum queues ignore on redeclare.
        let mut with_priority = cur.clone();
        with_priority.insert("x-max-priority".into(), AMQPValue::LongInt(5));
        assert!(assert_queue_equivalence(&cur, &with_priority, Q).is_ok());
    }

    #[test]
    fn same_as_rabbitmq_equivalence_texts() {
        let cur = args(&[("x-message-ttl", AMQPValue::LongInt(1000))]);
        let new = args(&[("x-message-ttl", AMQPValue::LongLongInt(2000))]);
        assert_eq!(
            assert_queue_equivalence(&cur, &new, Q).unwrap_err().text,
            "PRECONDITION_FAILED - inequivalent arg 'x-message-ttl' for queue 'q' in vhost '/': received '2000' but current is '1000'"
        );
        let same = args(&[("x-message-ttl", AMQPValue::ShortShortInt(100))]);
        let cur = args(&[("x-message-ttl", AMQPValue::LongInt(100))]);
        assert!(assert_queue_equivalence(&cur, &same, Q).is_ok());
        assert_eq!(
            assert_queue_equivalence(&cur, &FieldTable::default(), Q)
                .unwrap_err()
                .text,
            "PRECONDITION_FAILED - inequivalent arg 'x-message-ttl' for queue 'q' in vhost '/': received none but current is the value '100' of type 'signedint'"
        );
        let dbl = args(&[("x-message-ttl", AMQPValue::Double(100.0))]);
        assert!(
            assert_queue_equivalence(&cur, &dbl, Q)
                .unwrap_err()
                .text
                .ends_with("received '100.0' but current is '100'")
        );
        let unknown = args(&[("x-foo", AMQPValue::LongInt(1))]);
        assert!(assert_queue_equivalence(&FieldTable::default(), &unknown, Q).is_ok());
    }
}
