//! The hand-written hot path of the basic class.
//!
//! Publishing, delivering and acknowledging are what a broker does millions of times a second,
//! so these methods are decoded in place from the read buffer and encoded straight into the
//! output buffer, with no intermediate structs or allocations. Everything else goes through
//! amq-protocol (see [`super::method`]); a property test checks these against it.

use bytes::Bytes;

use super::frame::{FRAME_BODY, FRAME_HEADER, FRAME_METHOD, FRAME_OVERHEAD, FrameWriter};

pub const CLASS_BASIC: u16 = 60;
pub const PUBLISH: u16 = 40;
pub const RETURN: u16 = 50;
pub const DELIVER: u16 = 60;
pub const GET_OK: u16 = 71;
pub const ACK: u16 = 80;
pub const REJECT: u16 = 90;
pub const NACK: u16 = 120;

/// Why a hot-path method could not be decoded; the caller turns it into RabbitMQ's
/// `FRAME_ERROR - cannot decode ...` connection error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

/// A decoded `basic.publish`. Names are slices of the frame they came in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub exchange: Bytes,
    pub routing_key: Bytes,
    pub mandatory: bool,
    pub immediate: bool,
}

/// Reads a short string at `*pos`, advancing it; returns the string's byte range.
#[inline]
fn short_str(buf: &[u8], pos: &mut usize) -> Result<std::ops::Range<usize>, Malformed> {
    let len = *buf.get(*pos).ok_or(Malformed)? as usize;
    let start = *pos + 1;
    let end = start + len;
    if end > buf.len() {
        return Err(Malformed);
    }
    *pos = end;
    Ok(start..end)
}

/// Decodes `basic.publish` from a method payload (starting at the class id).
pub fn parse_publish(payload: &Bytes) -> Result<Publish, Malformed> {
    // class(2) method(2) ticket(2) exchange routing-key bits(1)
    let mut pos = 6;
    let exchange = short_str(payload, &mut pos)?;
    let routing_key = short_str(payload, &mut pos)?;
    if pos + 1 != payload.len() {
        return Err(Malformed);
    }
    let bits = payload[pos];
    Ok(Publish {
        exchange: payload.slice(exchange),
        routing_key: payload.slice(routing_key),
        mandatory: bits & 1 != 0,
        immediate: bits & 2 != 0,
    })
}

/// A decoded `basic.ack`, `basic.reject` or `basic.nack` from a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settle {
    pub delivery_tag: u64,
    pub multiple: bool,
    pub requeue: bool,
}

/// Decodes ack (60.80), reject (60.90) or nack (60.120) from a method payload.
pub fn parse_settle(method_id: u16, payload: &[u8]) -> Result<Settle, Malformed> {
    if payload.len() != 4 + 8 + 1 {
        return Err(Malformed);
    }
    let mut tag = [0u8; 8];
    tag.copy_from_slice(&payload[4..12]);
    let delivery_tag = u64::from_be_bytes(tag);
    let bits = payload[12];
    Ok(match method_id {
        ACK => Settle {
            delivery_tag,
            multiple: bits & 1 != 0,
            requeue: false,
        },
        REJECT => Settle {
            delivery_tag,
            multiple: false,
            requeue: bits & 1 != 0,
        },
        _ => Settle {
            delivery_tag,
            multiple: bits & 1 != 0,
            requeue: bits & 2 != 0,
        },
    })
}

#[inline]
fn put_short_str(out: &mut Vec<u8>, s: &[u8]) {
    // Names are validated as short strings where they enter the broker.
    let len = s.len().min(255);
    out.push(len as u8);
    out.extend_from_slice(&s[..len]);
}

/// Appends a `basic.deliver` method frame.
#[inline]
pub fn write_deliver(
    out: &mut Vec<u8>,
    channel: u16,
    consumer_tag: &[u8],
    delivery_tag: u64,
    redelivered: bool,
    exchange: &[u8],
    routing_key: &[u8],
) {
    let start = out.begin_frame(FRAME_METHOD, channel);
    out.extend_from_slice(&CLASS_BASIC.to_be_bytes());
    out.extend_from_slice(&DELIVER.to_be_bytes());
    put_short_str(out, consumer_tag);
    out.extend_from_slice(&delivery_tag.to_be_bytes());
    out.push(redelivered as u8);
    put_short_str(out, exchange);
    put_short_str(out, routing_key);
    out.end_frame(start);
}

/// Appends a `basic.get-ok` method frame.
#[allow(clippy::too_many_arguments)]
pub fn write_get_ok(
    out: &mut Vec<u8>,
    channel: u16,
    delivery_tag: u64,
    redelivered: bool,
    exchange: &[u8],
    routing_key: &[u8],
    message_count: u32,
) {
    let start = out.begin_frame(FRAME_METHOD, channel);
    out.extend_from_slice(&CLASS_BASIC.to_be_bytes());
    out.extend_from_slice(&GET_OK.to_be_bytes());
    out.extend_from_slice(&delivery_tag.to_be_bytes());
    out.push(redelivered as u8);
    put_short_str(out, exchange);
    put_short_str(out, routing_key);
    out.extend_from_slice(&message_count.to_be_bytes());
    out.end_frame(start);
}

/// Appends a `basic.return` method frame.
pub fn write_return(
    out: &mut Vec<u8>,
    channel: u16,
    reply_code: u16,
    reply_text: &str,
    exchange: &[u8],
    routing_key: &[u8],
) {
    let start = out.begin_frame(FRAME_METHOD, channel);
    out.extend_from_slice(&CLASS_BASIC.to_be_bytes());
    out.extend_from_slice(&RETURN.to_be_bytes());
    out.extend_from_slice(&reply_code.to_be_bytes());
    put_short_str(out, reply_text.as_bytes());
    put_short_str(out, exchange);
    put_short_str(out, routing_key);
    out.end_frame(start);
}

/// Appends a publisher-confirm `basic.ack` or `basic.nack` sent by the broker.
pub fn write_confirm(
    out: &mut Vec<u8>,
    channel: u16,
    ack: bool,
    delivery_tag: u64,
    multiple: bool,
) {
    let start = out.begin_frame(FRAME_METHOD, channel);
    out.extend_from_slice(&CLASS_BASIC.to_be_bytes());
    if ack {
        out.extend_from_slice(&ACK.to_be_bytes());
        out.extend_from_slice(&delivery_tag.to_be_bytes());
        out.push(multiple as u8);
    } else {
        out.extend_from_slice(&NACK.to_be_bytes());
        out.extend_from_slice(&delivery_tag.to_be_bytes());
        // multiple, requeue=false: a broker nack never asks for a requeue.
        out.push(multiple as u8);
    }
    out.end_frame(start);
}

/// Appends the content header and body frames of a message, splitting the body so that no
/// frame exceeds `frame_max` (0 means no limit).
pub fn write_content(
    out: &mut Vec<u8>,
    channel: u16,
    properties: &[u8],
    body: &[u8],
    frame_max: u32,
) {
    let start = out.begin_frame(FRAME_HEADER, channel);
    out.extend_from_slice(&CLASS_BASIC.to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(&(body.len() as u64).to_be_bytes());
    out.extend_from_slice(properties);
    out.end_frame(start);
    if body.is_empty() {
        return;
    }
    let chunk = if frame_max == 0 {
        body.len()
    } else {
        (frame_max as usize).saturating_sub(FRAME_OVERHEAD).max(1)
    };
    for part in body.chunks(chunk) {
        let start = out.begin_frame(FRAME_BODY, channel);
        out.extend_from_slice(part);
        out.end_frame(start);
    }
}

/// The `prefetch_size` of a `basic.qos` payload, which amq-protocol does not keep.
pub fn qos_prefetch_size(payload: &[u8]) -> Option<u32> {
    let b = payload.get(4..8)?;
    Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// A decoded content header frame. `properties` is the raw property list (flags and values)
/// exactly as the publisher sent it: it is forwarded unchanged to every consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentHeader {
    pub class_id: u16,
    pub weight: u16,
    pub body_size: u64,
    pub properties: Bytes,
}

/// Decodes a content header payload.
pub fn parse_content_header(payload: &Bytes) -> Result<ContentHeader, Malformed> {
    if payload.len() < 14 {
        return Err(Malformed);
    }
    let class_id = u16::from_be_bytes([payload[0], payload[1]]);
    let weight = u16::from_be_bytes([payload[2], payload[3]]);
    let mut size = [0u8; 8];
    size.copy_from_slice(&payload[4..12]);
    Ok(ContentHeader {
        class_id,
        weight,
        body_size: u64::from_be_bytes(size),
        properties: payload.slice(12..),
    })
}
