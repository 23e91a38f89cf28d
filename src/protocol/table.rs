//! Reading field-table values the way RabbitMQ reads arguments: any integer type is an
//! integer, long and short strings are both strings.

use amq_protocol::types::{AMQPValue, FieldTable};

/// Looks up `key` in a field table.
pub fn get<'a>(table: &'a FieldTable, key: &str) -> Option<&'a AMQPValue> {
    // The table is a sorted map: a lookup, not a scan (a headers binding with 30,000
    // arguments against a message with 30,000 headers was 10^9 comparisons).
    table.inner().get(key)
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

/// How deep field tables and arrays may nest in anything a client sends. RabbitMQ sets no
/// limit, but decoding is recursive (in amq-protocol, and in every `Drop` of the decoded
/// value), so a few kilobytes of nesting could overflow a thread's stack. Real headers nest
/// a few levels (`x-death` is four); a frame nesting deeper is refused before it is decoded.
pub const MAX_TABLE_DEPTH: usize = 64;

/// The most values a table the broker keeps may hold, those in nested tables and arrays
/// included: a queue's, an exchange's or a binding's arguments, a connection's client
/// properties. Decoded, a value takes 32 bytes or more, however small it was on the wire (a
/// void is one byte), so a 128 KiB frame of them became 4 MiB kept per object; with this
/// limit an object keeps at most about 160 KiB of them. RabbitMQ has no such limit; no
/// client or plugin we know of sends more than a few dozen.
pub const MAX_KEPT_TABLE_VALUES: usize = 4096;

/// Whether `t` holds at most `max` values, counting those nested in tables and arrays (in
/// one pass, without recursion, stopping as soon as it is past `max`).
pub fn values_within(t: &FieldTable, max: usize) -> bool {
    let mut left = max;
    // Values whose nested values are still to be counted; each value is counted as its
    // table or array is opened, so this never holds more than `max`.
    let mut open: Vec<&AMQPValue> = Vec::new();
    let top = t.inner();
    if top.len() > left {
        return false;
    }
    left -= top.len();
    open.extend(top.values());
    while let Some(v) = open.pop() {
        let before = open.len();
        match v {
            AMQPValue::FieldTable(t) if t.inner().len() <= left => open.extend(t.inner().values()),
            AMQPValue::FieldArray(a) if a.as_slice().len() <= left => open.extend(a.as_slice()),
            AMQPValue::FieldTable(_) | AMQPValue::FieldArray(_) => return false,
            _ => {}
        }
        left -= open.len() - before;
    }
    true
}

/// How many values `t` holds, counting those nested in tables and arrays (in one pass,
/// without recursion).
pub fn value_count(t: &FieldTable) -> usize {
    let mut count = 0;
    let mut open: Vec<&AMQPValue> = t.inner().values().collect();
    while let Some(v) = open.pop() {
        count += 1;
        match v {
            AMQPValue::FieldTable(t) => open.extend(t.inner().values()),
            AMQPValue::FieldArray(a) => open.extend(a.as_slice()),
            _ => {}
        }
    }
    count
}

/// The error for a field table nested past [`MAX_TABLE_DEPTH`]: refused as an undecodable
/// frame, the way RabbitMQ refuses one (501, closing the connection), with a text that says
/// why.
pub fn too_deep_error() -> crate::protocol::error::AmqpError {
    crate::amqp_error!(
        FrameError,
        "cannot decode field table: nested deeper than {} levels",
        MAX_TABLE_DEPTH
    )
}

/// Why [`check_depth`] refused a field table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableError {
    /// Nested deeper than [`MAX_TABLE_DEPTH`].
    TooDeep,
    /// Not a well-formed field table (decoding it fails anyway).
    Malformed,
}

/// Checks, without recursion and in one pass, that the field table encoded at the start of
/// `buf` (its 4-byte length first) nests tables and arrays at most `max_depth` deep. Returns
/// the bytes the table takes. The grammar is amq-protocol's (RabbitMQ's type tags), so a
/// table that passes decodes no deeper than checked here.
pub fn check_depth(buf: &[u8], max_depth: usize) -> Result<usize, TableError> {
    fn u32_at(buf: &[u8], at: usize) -> Result<usize, TableError> {
        let b = buf.get(at..at + 4).ok_or(TableError::Malformed)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }
    let len = u32_at(buf, 0)?;
    let total = 4usize.checked_add(len).ok_or(TableError::Malformed)?;
    if total > buf.len() {
        return Err(TableError::Malformed);
    }
    // Open tables and arrays: where each ends, and whether its entries have names.
    let mut open: Vec<(usize, bool)> = vec![(total, true)];
    let mut at = 4usize;
    while let Some(&(end, is_table)) = open.last() {
        if at == end {
            open.pop();
            continue;
        }
        if at > end {
            return Err(TableError::Malformed);
        }
        if is_table {
            let name = *buf.get(at).ok_or(TableError::Malformed)? as usize;
            at += 1 + name;
        }
        let tag = *buf.get(at).ok_or(TableError::Malformed)?;
        at += 1;
        let fixed = match tag {
            b'S' | b'x' => 4 + u32_at(buf, at)?,
            b'A' | b'F' => {
                let inner = u32_at(buf, at)?;
                let inner_end = at
                    .checked_add(4 + inner)
                    .filter(|&e| e <= end)
                    .ok_or(TableError::Malformed)?;
                if open.len() >= max_depth {
                    return Err(TableError::TooDeep);
                }
                open.push((inner_end, tag == b'F'));
                at += 4;
                continue;
            }
            _ => super::raw_table::fixed_len(tag).ok_or(TableError::Malformed)?,
        };
        at = at.checked_add(fixed).ok_or(TableError::Malformed)?;
    }
    Ok(total)
}

/// A table's wire encoding: equal tables (same keys, values and value types) encode to equal
/// bytes, since a `FieldTable` keeps its keys sorted.
pub fn encode(t: &FieldTable) -> Vec<u8> {
    amq_protocol::types::generation::gen_field_table(t)(Vec::new().into())
        .map(|ctx| ctx.write)
        .unwrap_or_default()
}

#[cfg(test)]
mod value_count_tests {
    use super::*;
    use amq_protocol::types::FieldArray;

    fn with_array(n: usize) -> FieldTable {
        let mut inner = FieldTable::default();
        inner.insert(
            "v".into(),
            AMQPValue::FieldArray(vec![AMQPValue::Void; n].into()),
        );
        let mut t = FieldTable::default();
        t.insert("a".into(), AMQPValue::Boolean(true));
        t.insert("t".into(), AMQPValue::FieldTable(inner));
        t
    }

    /// Every value counts, nested ones too: here 3 (`a`, `t`, `v`) and the array's.
    #[test]
    fn values_are_counted_through_tables_and_arrays() {
        assert!(values_within(&with_array(97), 100));
        assert!(!values_within(&with_array(98), 100));
        assert!(values_within(&FieldTable::default(), 0));
        let array = AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::Void; 5]));
        let mut deep = FieldTable::default();
        deep.insert("x".into(), AMQPValue::FieldArray(vec![array; 5].into()));
        assert!(values_within(&deep, 31));
        assert!(!values_within(&deep, 30));
    }
}

#[cfg(test)]
mod depth_tests {
    use super::*;
    use amq_protocol::types::{AMQPValue, FieldArray, FieldTable, LongString};

    /// A table nesting `depth` levels: tables inside arrays inside tables.
    fn nested(depth: usize) -> FieldTable {
        let mut t = FieldTable::default();
        t.insert("leaf".into(), AMQPValue::LongString(LongString::from("x")));
        for i in 1..depth {
            let mut outer = FieldTable::default();
            if i % 2 == 0 {
                outer.insert("t".into(), AMQPValue::FieldTable(t));
            } else {
                outer.insert(
                    "a".into(),
                    AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::FieldTable(t)])),
                );
            }
            t = outer;
        }
        t
    }

    #[test]
    fn counts_the_depth_of_tables_and_arrays() {
        let t = nested(3);
        let bytes = encode(&t);
        // 3 tables and 1 array between them: 4 levels.
        assert_eq!(check_depth(&bytes, 4), Ok(bytes.len()));
        assert_eq!(check_depth(&bytes, 3), Err(TableError::TooDeep));
    }

    #[test]
    fn agrees_with_amq_protocol_on_what_is_well_formed() {
        let bytes = encode(&nested(10));
        assert!(check_depth(&bytes, MAX_TABLE_DEPTH).is_ok());
        for cut in 1..bytes.len() {
            assert_eq!(
                check_depth(&bytes[..cut], MAX_TABLE_DEPTH),
                Err(TableError::Malformed)
            );
        }
        assert_eq!(
            check_depth(&[0, 0, 0, 3, 1, b'k', b'?'], 8),
            Err(TableError::Malformed)
        );
    }

    #[test]
    fn a_deep_table_is_refused_without_recursing() {
        // A table holding 100,000 arrays nested in each other, built by hand: decoding it
        // recursively would blow any stack; the check walks it in a loop and stops early.
        let levels = 100_000usize;
        let mut bytes = Vec::with_capacity(8 + 5 * levels);
        bytes.extend_from_slice(&((2 + 5 * levels) as u32).to_be_bytes());
        bytes.extend_from_slice(&[1, b'a']);
        for d in 0..levels {
            bytes.push(b'A');
            bytes.extend_from_slice(&((5 * (levels - d - 1)) as u32).to_be_bytes());
        }
        assert_eq!(
            check_depth(&bytes, MAX_TABLE_DEPTH),
            Err(TableError::TooDeep)
        );
        assert_eq!(check_depth(&bytes, levels + 1), Ok(bytes.len()));
    }
}
