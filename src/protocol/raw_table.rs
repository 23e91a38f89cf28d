//! Field tables read and written in their encoded form, without decoding them.
//!
//! A message's headers can be large (a message dead-lettered through thousands of queues
//! carries thousands of `x-death` entries), and most of what the broker does to them touches
//! a few top-level entries. Nested tables and arrays carry their byte length, so stepping
//! over a value is O(1) whatever it holds: entries are handed around as the byte slices they
//! are and copied as they are.
//!
//! Values here are slices that start with their type tag (`S` for a long string, `F` for a
//! table, ...), as they appear inside a table or an array.

/// Bytes a value of a fixed-size type takes after its tag (RabbitMQ's tags, as amq-protocol
/// reads them); `None` for the sized types (`S`, `x`, `A`, `F`) and unknown tags.
pub fn fixed_len(tag: u8) -> Option<usize> {
    Some(match tag {
        b'V' => 0,
        b't' | b'b' | b'B' => 1,
        b's' | b'U' | b'u' => 2,
        b'I' | b'i' | b'f' => 4,
        b'D' => 5,
        b'L' | b'l' | b'd' | b'T' => 8,
        _ => return None,
    })
}

/// Bytes the value at the start of `buf` takes, its type tag included; `None` if malformed.
pub fn value_len(buf: &[u8]) -> Option<usize> {
    let (&tag, rest) = buf.split_first()?;
    let len = match tag {
        b'S' | b'x' | b'A' | b'F' => 4usize.checked_add(u32_at(rest)?)?,
        _ => fixed_len(tag)?,
    };
    (len <= rest.len()).then_some(1 + len)
}

fn u32_at(buf: &[u8]) -> Option<usize> {
    let b = buf.get(..4)?;
    Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
}

/// Decodes an encoded table (length first), all of it.
pub fn decode(table: &[u8]) -> Option<amq_protocol::types::FieldTable> {
    match amq_protocol::types::parsing::parse_field_table(table) {
        Ok(([], decoded)) => Some(decoded),
        _ => None,
    }
}

/// The entries of an encoded table (its 4-byte length first), as (name, value) pairs.
pub fn entries(table: &[u8]) -> Entries<'_> {
    let body = u32_at(table)
        .and_then(|len| table.get(4..4 + len))
        .unwrap_or_default();
    Entries { rest: body }
}

/// Iterates a table's entries; stops at the first malformed one.
#[derive(Debug, Clone)]
pub struct Entries<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Entries<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let (&name_len, after) = self.rest.split_first()?;
        let name = after.get(..name_len as usize)?;
        let value_at = &after[name_len as usize..];
        let len = value_len(value_at)?;
        let value = &value_at[..len];
        self.rest = &value_at[len..];
        Some((name, value))
    }
}

/// The last entry named `name` (the one a decoder keeps when names repeat).
pub fn get<'a>(table: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    entries(table)
        .filter(|(k, _)| *k == name)
        .map(|(_, v)| v)
        .last()
}

/// The items of an array value (tag `A`); empty for anything else.
pub fn items(value: &[u8]) -> Items<'_> {
    let body = match value.split_first() {
        Some((b'A', rest)) => u32_at(rest)
            .and_then(|len| rest.get(4..4 + len))
            .unwrap_or_default(),
        _ => &[],
    };
    Items { rest: body }
}

/// Iterates an array's values; stops at the first malformed one.
#[derive(Debug, Clone)]
pub struct Items<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Items<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<Self::Item> {
        let len = value_len(self.rest)?;
        let (value, rest) = self.rest.split_at(len);
        self.rest = rest;
        Some(value)
    }
}

/// The encoded table (length first) inside a table value (tag `F`).
pub fn as_table(value: &[u8]) -> Option<&[u8]> {
    match value.split_first() {
        Some((b'F', table)) => Some(table),
        _ => None,
    }
}

/// The bytes of a long string value (tag `S`) or a short string (tag `s` is a short int in
/// RabbitMQ's tags, so only `S` and byte arrays `x` hold text).
pub fn as_bytes(value: &[u8]) -> Option<&[u8]> {
    match value.split_first() {
        Some((b'S' | b'x', rest)) => rest.get(4..),
        _ => None,
    }
}

/// Builds an encoded table or array: entries are appended as they come, the length is
/// written when it is finished.
#[derive(Debug)]
pub struct Builder {
    buf: Vec<u8>,
    /// Where the length goes: after the tag of a value, first in a bare table.
    len_at: usize,
}

impl Builder {
    /// A table, or an array when `tag` is `Some(b'A')`: the tag is written first, for a value.
    pub fn new(tag: Option<u8>, capacity: usize) -> Self {
        let mut buf = Vec::with_capacity(capacity + 5);
        buf.extend(tag);
        let len_at = buf.len();
        buf.extend_from_slice(&[0; 4]);
        Builder { buf, len_at }
    }

    /// Appends a named entry (for tables). Names longer than 255 bytes are cut, as a short
    /// string must be.
    pub fn entry(&mut self, name: &[u8], value: &[u8]) {
        let name = &name[..name.len().min(255)];
        self.buf.push(name.len() as u8);
        self.buf.extend_from_slice(name);
        self.buf.extend_from_slice(value);
    }

    /// Appends a long string entry.
    pub fn long_str(&mut self, name: &[u8], text: &[u8]) {
        self.entry(name, &long_str(text));
    }

    /// Appends a value (for arrays).
    pub fn item(&mut self, value: &[u8]) {
        self.buf.extend_from_slice(value);
    }

    /// The encoded table or array; `None` past the 4 GiB a length can say.
    pub fn finish(mut self) -> Option<Vec<u8>> {
        let at = self.len_at;
        let len = u32::try_from(self.buf.len() - at - 4).ok()?;
        self.buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
        Some(self.buf)
    }
}

/// A long string value (tag `S`).
pub fn long_str(text: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(5 + text.len());
    v.push(b'S');
    v.extend_from_slice(&(text.len() as u32).to_be_bytes());
    v.extend_from_slice(text);
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::types::{AMQPValue, FieldArray, FieldTable, LongString};

    fn sample() -> FieldTable {
        let mut inner = FieldTable::default();
        inner.insert("queue".into(), AMQPValue::LongString(LongString::from("q")));
        inner.insert("count".into(), AMQPValue::LongLongInt(3));
        let mut t = FieldTable::default();
        t.insert("a".into(), AMQPValue::LongInt(7));
        t.insert(
            "x-death".into(),
            AMQPValue::FieldArray(FieldArray::from(vec![
                AMQPValue::FieldTable(inner.clone()),
                AMQPValue::FieldTable(inner),
            ])),
        );
        t.insert("z".into(), AMQPValue::LongString(LongString::from("end")));
        t
    }

    #[test]
    fn reads_what_amq_protocol_writes() {
        let encoded = crate::protocol::table::encode(&sample());
        let names: Vec<&[u8]> = entries(&encoded).map(|(k, _)| k).collect();
        assert_eq!(names, vec![&b"a"[..], b"x-death", b"z"]);
        assert_eq!(get(&encoded, b"z").and_then(as_bytes), Some(&b"end"[..]));
        let deaths: Vec<&[u8]> = items(get(&encoded, b"x-death").unwrap()).collect();
        assert_eq!(deaths.len(), 2);
        let first = as_table(deaths[0]).unwrap();
        assert_eq!(get(first, b"queue").and_then(as_bytes), Some(&b"q"[..]));
    }

    #[test]
    fn builds_what_amq_protocol_reads() {
        let encoded = crate::protocol::table::encode(&sample());
        let mut b = Builder::new(None, encoded.len());
        for (k, v) in entries(&encoded) {
            b.entry(k, v);
        }
        b.long_str(b"extra", b"value");
        let rebuilt = b.finish().unwrap();
        let (rest, table) =
            amq_protocol::types::parsing::parse_field_table(rebuilt.as_slice()).expect("decodes");
        assert!(rest.is_empty());
        let mut expected = sample();
        expected.insert(
            "extra".into(),
            AMQPValue::LongString(LongString::from("value")),
        );
        assert_eq!(table, expected);

        let mut a = Builder::new(Some(b'A'), 16);
        a.item(&long_str(b"one"));
        a.item(&long_str(b"two"));
        let array = a.finish().unwrap();
        assert_eq!(items(&array).count(), 2);
    }

    #[test]
    fn malformed_input_ends_iteration_without_panicking() {
        let encoded = crate::protocol::table::encode(&sample());
        for cut in 0..encoded.len() {
            let _ = entries(&encoded[..cut]).count();
            let mut lying = encoded.clone();
            lying[cut] ^= 0xff;
            for (_, v) in entries(&lying) {
                let _ = items(v).count();
            }
        }
    }
}
