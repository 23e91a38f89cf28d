//! Lazy access to basic-class message properties.
//!
//! Properties travel as the raw bytes the publisher sent (flags, then values). Routing and
//! queueing only need a handful of them (delivery mode, priority, expiration, headers,
//! user-id, reply-to), so [`scan`] walks the list once, checks its structure and records where
//! those few live, without allocating. Anything that must change a message's properties
//! (dead-lettering adds `x-death`) decodes them fully with amq-protocol, on the cold path.

use std::ops::Range;

use amq_protocol::types::FieldTable;

use super::basic::Malformed;
use super::table::{MAX_TABLE_DEPTH, TableError, check_depth};

/// Why a raw property list was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanError {
    /// Not a well-formed property list.
    Malformed,
    /// Its headers table nests deeper than [`MAX_TABLE_DEPTH`].
    TooDeep,
}

impl From<Malformed> for ScanError {
    fn from(_: Malformed) -> Self {
        ScanError::Malformed
    }
}

/// Property flag bits, in wire order (bit 15 first).
pub const CONTENT_TYPE: u16 = 1 << 15;
pub const CONTENT_ENCODING: u16 = 1 << 14;
pub const HEADERS: u16 = 1 << 13;
pub const DELIVERY_MODE: u16 = 1 << 12;
pub const PRIORITY: u16 = 1 << 11;
pub const CORRELATION_ID: u16 = 1 << 10;
pub const REPLY_TO: u16 = 1 << 9;
pub const EXPIRATION: u16 = 1 << 8;
pub const MESSAGE_ID: u16 = 1 << 7;
pub const TIMESTAMP: u16 = 1 << 6;
pub const TYPE: u16 = 1 << 5;
pub const USER_ID: u16 = 1 << 4;
pub const APP_ID: u16 = 1 << 3;
pub const CLUSTER_ID: u16 = 1 << 2;

/// Where the properties routing cares about sit inside the raw property bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PropertySummary {
    /// 2 means persistent; anything else (usually 1 or absent) is transient.
    pub delivery_mode: u8,
    pub priority: Option<u8>,
    /// The headers table, including its 4-byte length prefix.
    pub headers: Option<Range<usize>>,
    pub reply_to: Option<Range<usize>>,
    pub expiration: Option<Range<usize>>,
    pub user_id: Option<Range<usize>>,
}

impl PropertySummary {
    pub fn persistent(&self) -> bool {
        self.delivery_mode == 2
    }
}

/// Walks a raw property list and records the fields routing needs.
pub fn scan(raw: &[u8]) -> Result<PropertySummary, ScanError> {
    if raw.len() < 2 {
        return Err(ScanError::Malformed);
    }
    let flags = u16::from_be_bytes([raw[0], raw[1]]);
    let mut pos = 2;
    // Like RabbitMQ, the two low bits (reserved and "more flags follow") are ignored: the
    // basic class has only fourteen properties.
    let mut summary = PropertySummary::default();
    let short = |pos: &mut usize| -> Result<Range<usize>, Malformed> {
        let len = *raw.get(*pos).ok_or(Malformed)? as usize;
        let range = *pos + 1..*pos + 1 + len;
        if range.end > raw.len() {
            return Err(Malformed);
        }
        *pos = range.end;
        Ok(range)
    };
    let octet = |pos: &mut usize| -> Result<u8, Malformed> {
        let b = *raw.get(*pos).ok_or(Malformed)?;
        *pos += 1;
        Ok(b)
    };
    if flags & CONTENT_TYPE != 0 {
        short(&mut pos)?;
    }
    if flags & CONTENT_ENCODING != 0 {
        short(&mut pos)?;
    }
    if flags & HEADERS != 0 {
        let len_bytes = raw.get(pos..pos + 4).ok_or(Malformed)?;
        let len = u32::from_be_bytes([len_bytes[0], len_bytes[1], len_bytes[2], len_bytes[3]]);
        let end = pos + 4 + len as usize;
        if end > raw.len() {
            return Err(ScanError::Malformed);
        }
        // Decoding headers recurses: make sure it cannot recurse without bound.
        match check_depth(&raw[pos..end], MAX_TABLE_DEPTH) {
            Ok(_) => {}
            Err(TableError::TooDeep) => return Err(ScanError::TooDeep),
            Err(TableError::Malformed) => return Err(ScanError::Malformed),
        }
        summary.headers = Some(pos..end);
        pos = end;
    }
    if flags & DELIVERY_MODE != 0 {
        summary.delivery_mode = octet(&mut pos)?;
    }
    if flags & PRIORITY != 0 {
        summary.priority = Some(octet(&mut pos)?);
    }
    if flags & CORRELATION_ID != 0 {
        short(&mut pos)?;
    }
    if flags & REPLY_TO != 0 {
        summary.reply_to = Some(short(&mut pos)?);
    }
    if flags & EXPIRATION != 0 {
        summary.expiration = Some(short(&mut pos)?);
    }
    if flags & MESSAGE_ID != 0 {
        short(&mut pos)?;
    }
    if flags & TIMESTAMP != 0 {
        if pos + 8 > raw.len() {
            return Err(ScanError::Malformed);
        }
        pos += 8;
    }
    if flags & TYPE != 0 {
        short(&mut pos)?;
    }
    if flags & USER_ID != 0 {
        summary.user_id = Some(short(&mut pos)?);
    }
    if flags & APP_ID != 0 {
        short(&mut pos)?;
    }
    if flags & CLUSTER_ID != 0 {
        short(&mut pos)?;
    }
    Ok(summary)
}

/// Decodes a headers table found by [`scan`] (the range includes the length prefix).
pub fn decode_headers(raw: &[u8], range: &Range<usize>) -> Option<FieldTable> {
    let bytes = raw.get(range.clone())?;
    match amq_protocol::types::parsing::parse_field_table(bytes) {
        Ok(([], table)) => Some(table),
        _ => None,
    }
}

/// The raw property list with its headers table replaced (the headers flag stays set).
pub fn replace_headers(
    raw: &[u8],
    summary: &PropertySummary,
    headers: &FieldTable,
) -> Option<bytes::Bytes> {
    let range = summary.headers.as_ref()?;
    let encoded = amq_protocol::types::generation::gen_field_table(headers)(Vec::new().into())
        .ok()?
        .write;
    let mut out = Vec::with_capacity(raw.len() - range.len() + encoded.len());
    out.extend_from_slice(&raw[..range.start]);
    out.extend_from_slice(&encoded);
    out.extend_from_slice(&raw[range.end..]);
    Some(out.into())
}

/// Decodes every property, for the cold paths that rewrite them (dead-lettering).
pub fn decode_all(raw: &[u8]) -> Option<amq_protocol::protocol::BasicProperties> {
    match amq_protocol::protocol::basic::parse_properties(raw) {
        Ok(([], props)) => Some(props),
        _ => None,
    }
}

/// Encodes properties back to their raw form.
pub fn encode_all(props: &amq_protocol::protocol::BasicProperties) -> Option<bytes::Bytes> {
    amq_protocol::protocol::basic::gen_properties(props)(Vec::new().into())
        .ok()
        .map(|ctx| ctx.write.into())
}

/// The raw property list as a dead letter carries it: `headers` (an encoded table, length
/// first) in place of its headers, and no `expiration`. Everything else is copied as is.
pub fn dead_letter_properties(
    raw: &[u8],
    summary: &PropertySummary,
    headers: &[u8],
) -> Option<bytes::Bytes> {
    if raw.len() < 2 {
        return None;
    }
    let flags = u16::from_be_bytes([raw[0], raw[1]]);
    // Where the headers are, or would be: after content_type and content_encoding.
    let headers_range = match &summary.headers {
        Some(range) => range.clone(),
        None => {
            let mut pos = 2;
            for flag in [CONTENT_TYPE, CONTENT_ENCODING] {
                if flags & flag != 0 {
                    pos += 1 + *raw.get(pos)? as usize;
                }
            }
            pos..pos
        }
    };
    // The expiration with its length byte.
    let expiration = match &summary.expiration {
        Some(range) => range.start.checked_sub(1)?..range.end,
        None => headers_range.end..headers_range.end,
    };
    let new_flags = (flags | HEADERS) & !EXPIRATION;
    let mut out = Vec::with_capacity(raw.len() + headers.len());
    out.extend_from_slice(&new_flags.to_be_bytes());
    out.extend_from_slice(raw.get(2..headers_range.start)?);
    out.extend_from_slice(headers);
    out.extend_from_slice(raw.get(headers_range.end..expiration.start)?);
    out.extend_from_slice(raw.get(expiration.end..)?);
    Some(out.into())
}

/// The raw property list with its `reply_to` replaced by `reply_to` (at most 255 bytes, as
/// a short string must be). `None` if the message has no reply_to.
pub fn replace_reply_to(
    raw: &[u8],
    summary: &PropertySummary,
    reply_to: &str,
) -> Option<bytes::Bytes> {
    let range = summary.reply_to.as_ref()?;
    let len = u8::try_from(reply_to.len()).ok()?;
    // The length byte sits just before the string.
    let start = range.start.checked_sub(1)?;
    let mut out = Vec::with_capacity(raw.len() - range.len() + reply_to.len());
    out.extend_from_slice(&raw[..start]);
    out.push(len);
    out.extend_from_slice(reply_to.as_bytes());
    out.extend_from_slice(&raw[range.end..]);
    Some(out.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::protocol::BasicProperties;

    #[test]
    fn dead_letter_properties_swap_the_headers_and_drop_the_expiration() {
        let mut headers = FieldTable::default();
        headers.insert("k".into(), AMQPValue::LongInt(1));
        let cases = [
            BasicProperties::default(),
            BasicProperties::default().with_expiration("5".into()),
            BasicProperties::default()
                .with_content_type("text/plain".into())
                .with_content_encoding("gzip".into())
                .with_headers(FieldTable::default())
                .with_delivery_mode(2)
                .with_reply_to("r".into())
                .with_expiration("60000".into())
                .with_message_id("m".into())
                .with_app_id("a".into()),
            BasicProperties::default()
                .with_content_type("t".into())
                .with_priority(3),
        ];
        for props in cases {
            let raw = encode(&props);
            let summary = scan(&raw).unwrap();
            let table = crate::protocol::table::encode(&headers);
            let out = dead_letter_properties(&raw, &summary, &table).unwrap();
            let mut expected = BasicProperties::default();
            if let Some(v) = props.content_type() {
                expected = expected.with_content_type(v.clone());
            }
            if let Some(v) = props.content_encoding() {
                expected = expected.with_content_encoding(v.clone());
            }
            expected = expected.with_headers(headers.clone());
            if let Some(v) = props.delivery_mode() {
                expected = expected.with_delivery_mode(*v);
            }
            if let Some(v) = props.priority() {
                expected = expected.with_priority(*v);
            }
            if let Some(v) = props.reply_to() {
                expected = expected.with_reply_to(v.clone());
            }
            if let Some(v) = props.message_id() {
                expected = expected.with_message_id(v.clone());
            }
            if let Some(v) = props.app_id() {
                expected = expected.with_app_id(v.clone());
            }
            assert_eq!(&out[..], &encode(&expected)[..], "{props:?}");
        }
    }

    #[test]
    fn reply_to_is_replaced_in_place() {
        let props = BasicProperties::default()
            .with_correlation_id("c1".into())
            .with_reply_to("amq.rabbitmq.reply-to".into())
            .with_expiration("60000".into());
        let raw = encode(&props);
        let summary = scan(&raw).unwrap();
        let out = replace_reply_to(&raw, &summary, "amq.rabbitmq.reply-to.abc.def==").unwrap();
        let expected = encode(
            &props
                .clone()
                .with_reply_to("amq.rabbitmq.reply-to.abc.def==".into()),
        );
        assert_eq!(&out[..], &expected[..]);
    }
    use amq_protocol::types::{AMQPValue, ShortString};

    fn encode(props: &BasicProperties) -> Vec<u8> {
        let ctx = amq_protocol::protocol::basic::gen_properties(props)(Vec::new().into())
            .expect("in-memory encoding");
        ctx.write
    }

    #[test]
    fn finds_the_fields_routing_needs() {
        let mut headers = FieldTable::default();
        headers.insert(ShortString::from("k"), AMQPValue::LongString("v".into()));
        let props = BasicProperties::default()
            .with_content_type("text/plain".into())
            .with_headers(headers.clone())
            .with_delivery_mode(2)
            .with_priority(7)
            .with_reply_to("rq".into())
            .with_expiration("1000".into())
            .with_timestamp(42)
            .with_user_id("guest".into());
        let raw = encode(&props);
        let s = scan(&raw).unwrap();
        assert!(s.persistent());
        assert_eq!(s.priority, Some(7));
        assert_eq!(&raw[s.reply_to.clone().unwrap()], b"rq");
        assert_eq!(&raw[s.expiration.clone().unwrap()], b"1000");
        assert_eq!(&raw[s.user_id.clone().unwrap()], b"guest");
        assert_eq!(
            decode_headers(&raw, s.headers.as_ref().unwrap()),
            Some(headers)
        );
    }

    #[test]
    fn truncated_properties_are_malformed() {
        let props = BasicProperties::default().with_content_type("text/plain".into());
        let raw = encode(&props);
        assert!(scan(&raw[..raw.len() - 1]).is_err());
        assert!(scan(&[]).is_err());
    }
}
