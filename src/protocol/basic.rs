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

/// Decodes `basic.publish` from a method payload (starting at the class id); a payload
/// that is not one is handed back, for the error to describe. Taken by value: the payload
/// becomes the routing key, so that the names hold one reference to the chunk they
/// arrived in beyond the payload's own (none for the default exchange), not two (each is an
/// atomic operation on the chunk's count, on every publish).
pub fn parse_publish(mut payload: Bytes) -> Result<Publish, Bytes> {
    // class(2) method(2) ticket(2) exchange routing-key bits(1)
    let mut pos = 6;
    let Ok(exchange) = short_str(&payload, &mut pos) else {
        return Err(payload);
    };
    let Ok(routing_key) = short_str(&payload, &mut pos) else {
        return Err(payload);
    };
    if pos + 1 != payload.len() {
        return Err(payload);
    }
    let bits = payload[pos];
    let exchange = payload.slice(exchange);
    let routing_key = if routing_key.is_empty() {
        // Holding no chunk, as an empty slice does (a fanout publisher's messages would
        // otherwise keep their read buffers through `Message::compacted`).
        Bytes::new()
    } else {
        payload.truncate(routing_key.end);
        bytes::Buf::advance(&mut payload, routing_key.start);
        payload
    };
    Ok(Publish {
        exchange,
        routing_key,
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
    // Names are validated as short strings where they enter the broker (AMQP by the parser,
    // HTTP and definitions files by `VirtualHost::declare_*` and `Broker::add_vhost`).
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

/// Decodes a content header payload, which becomes the raw property list: taken by value,
/// so that the properties are the payload's own reference to its chunk rather than a second
/// one (each is an atomic operation on the chunk's count). A payload too short to be a
/// content header is handed back, for the error to describe.
pub fn parse_content_header(mut payload: Bytes) -> Result<ContentHeader, Bytes> {
    if payload.len() < 14 {
        return Err(payload);
    }
    let class_id = u16::from_be_bytes([payload[0], payload[1]]);
    let weight = u16::from_be_bytes([payload[2], payload[3]]);
    let mut size = [0u8; 8];
    size.copy_from_slice(&payload[4..12]);
    bytes::Buf::advance(&mut payload, 12);
    Ok(ContentHeader {
        class_id,
        weight,
        body_size: u64::from_be_bytes(size),
        properties: payload,
    })
}

/// The hot path checked against amq-protocol: whatever it encodes we decode the same, and
/// whatever we encode it decodes the same.
#[cfg(test)]
mod differential {
    use super::*;
    use amq_protocol::frame::{AMQPFrame, WriteContext, gen_frame, parse_frame};
    use amq_protocol::protocol::{AMQPClass, BasicProperties, basic as amqp};
    use amq_protocol::types::{AMQPValue, FieldTable, ShortString};
    use proptest::prelude::*;

    fn encode(frame: &AMQPFrame) -> Vec<u8> {
        gen_frame(frame)(WriteContext::from(Vec::new()))
            .expect("encodes")
            .write
    }

    fn payload(frame: &[u8]) -> Bytes {
        Bytes::copy_from_slice(&frame[7..frame.len() - 1])
    }

    fn short() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9._*#-]{0,255}"
    }

    fn properties() -> impl Strategy<Value = BasicProperties> {
        (
            proptest::option::of("[a-z/]{0,20}"),
            proptest::option::of(any::<u8>()),
            proptest::option::of(any::<u8>()),
            proptest::option::of("[0-9]{0,9}"),
            proptest::option::of(proptest::collection::vec(
                ("[a-z]{1,8}", any::<i32>()),
                0..4,
            )),
            proptest::option::of(any::<u64>()),
            proptest::option::of("[a-z]{0,12}"),
        )
            .prop_map(|(ct, mode, prio, exp, headers, ts, reply)| {
                let mut p = BasicProperties::default();
                if let Some(v) = ct {
                    p = p.with_content_type(v.into());
                }
                if let Some(v) = mode {
                    p = p.with_delivery_mode(v);
                }
                if let Some(v) = prio {
                    p = p.with_priority(v);
                }
                if let Some(v) = exp {
                    p = p.with_expiration(v.into());
                }
                if let Some(h) = headers {
                    let mut t = FieldTable::default();
                    for (k, v) in h {
                        t.insert(ShortString::from(k), AMQPValue::LongInt(v));
                    }
                    p = p.with_headers(t);
                }
                if let Some(v) = ts {
                    p = p.with_timestamp(v);
                }
                if let Some(v) = reply {
                    p = p.with_reply_to(v.into());
                }
                p
            })
    }

    proptest! {
        #[test]
        fn publish_decodes_like_amq_protocol(ex in short(), rk in short(), mandatory: bool, immediate: bool, channel in 1u16..) {
            let frame = encode(&AMQPFrame::Method(channel, AMQPClass::Basic(amqp::AMQPMethod::Publish(amqp::Publish {
                exchange: ex.clone().into(), routing_key: rk.clone().into(), mandatory, immediate,
            }))));
            let header = super::super::frame::peek_frame(&frame, 0).unwrap().unwrap();
            prop_assert_eq!(header.channel, channel);
            let p = parse_publish(payload(&frame)).unwrap();
            prop_assert_eq!(&p.exchange[..], ex.as_bytes());
            prop_assert_eq!(&p.routing_key[..], rk.as_bytes());
            prop_assert_eq!((p.mandatory, p.immediate), (mandatory, immediate));
        }

        #[test]
        fn settle_decodes_like_amq_protocol(tag: u64, multiple: bool, requeue: bool) {
            let cases = [
                (ACK, AMQPClass::Basic(amqp::AMQPMethod::Ack(amqp::Ack { delivery_tag: tag, multiple })), Settle { delivery_tag: tag, multiple, requeue: false }),
                (REJECT, AMQPClass::Basic(amqp::AMQPMethod::Reject(amqp::Reject { delivery_tag: tag, requeue })), Settle { delivery_tag: tag, multiple: false, requeue }),
                (NACK, AMQPClass::Basic(amqp::AMQPMethod::Nack(amqp::Nack { delivery_tag: tag, multiple, requeue })), Settle { delivery_tag: tag, multiple, requeue }),
            ];
            for (id, method, expected) in cases {
                let frame = encode(&AMQPFrame::Method(1, method));
                prop_assert_eq!(parse_settle(id, &payload(&frame)).unwrap(), expected);
            }
        }

        #[test]
        fn deliver_encodes_like_amq_protocol(tag in short(), dt: u64, redelivered: bool, ex in short(), rk in short(), channel: u16) {
            let mut ours = Vec::new();
            write_deliver(&mut ours, channel, tag.as_bytes(), dt, redelivered, ex.as_bytes(), rk.as_bytes());
            let (rest, frame) = parse_frame(&ours[..]).unwrap();
            prop_assert!(rest.is_empty());
            let expected = AMQPFrame::Method(channel, AMQPClass::Basic(amqp::AMQPMethod::Deliver(amqp::Deliver {
                consumer_tag: tag.into(), delivery_tag: dt, redelivered, exchange: ex.into(), routing_key: rk.into(),
            })));
            prop_assert_eq!(frame, expected);
        }

        #[test]
        fn get_ok_encodes_like_amq_protocol(dt: u64, redelivered: bool, ex in short(), rk in short(), count: u32) {
            let mut ours = Vec::new();
            write_get_ok(&mut ours, 9, dt, redelivered, ex.as_bytes(), rk.as_bytes(), count);
            let (_, frame) = parse_frame(&ours[..]).unwrap();
            let expected = AMQPFrame::Method(9, AMQPClass::Basic(amqp::AMQPMethod::GetOk(amqp::GetOk {
                delivery_tag: dt, redelivered, exchange: ex.into(), routing_key: rk.into(), message_count: count,
            })));
            prop_assert_eq!(frame, expected);
        }

        #[test]
        fn confirms_encode_like_amq_protocol(tag: u64, multiple: bool) {
            let mut ours = Vec::new();
            write_confirm(&mut ours, 3, true, tag, multiple);
            write_confirm(&mut ours, 3, false, tag, multiple);
            let (rest, ack) = parse_frame(&ours[..]).unwrap();
            let (_, nack) = parse_frame(rest).unwrap();
            prop_assert_eq!(ack, AMQPFrame::Method(3, AMQPClass::Basic(amqp::AMQPMethod::Ack(amqp::Ack { delivery_tag: tag, multiple }))));
            prop_assert_eq!(nack, AMQPFrame::Method(3, AMQPClass::Basic(amqp::AMQPMethod::Nack(amqp::Nack { delivery_tag: tag, multiple, requeue: false }))));
        }

        #[test]
        fn content_round_trips_through_amq_protocol(props in properties(), body in proptest::collection::vec(any::<u8>(), 0..20_000), frame_max in 4096u32..20_000) {
            // Their header frame, decoded by us and re-encoded: byte-identical properties.
            let header = encode(&AMQPFrame::Header(1, amq_protocol::frame::AMQPContentHeader {
                class_id: 60, body_size: body.len() as u64, properties: props.clone(),
            }));
            let ours = parse_content_header(payload(&header)).unwrap();
            prop_assert_eq!(ours.body_size, body.len() as u64);
            let summary = super::super::properties::scan(&ours.properties).unwrap();
            prop_assert_eq!(summary.delivery_mode, props.delivery_mode().unwrap_or(0));
            prop_assert_eq!(summary.priority, *props.priority());
            let mut out = Vec::new();
            write_content(&mut out, 1, &ours.properties, &body, frame_max);
            let mut rest = &out[..];
            let mut frames = Vec::new();
            while !rest.is_empty() {
                let (r, f) = parse_frame(rest).unwrap();
                prop_assert!(rest.len() - r.len() <= frame_max as usize);
                frames.push(f);
                rest = r;
            }
            let AMQPFrame::Header(1, h) = &frames[0] else { panic!("header first") };
            prop_assert_eq!(&h.properties, &props);
            let mut got = Vec::new();
            for f in &frames[1..] {
                let AMQPFrame::Body(1, b) = f else { panic!("body frames") };
                got.extend_from_slice(b);
            }
            prop_assert_eq!(got, body);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: the method's payload became the routing key even when the key was empty,
    /// so a publish with an empty routing key (the usual one to a fanout exchange) kept a
    /// reference to the read chunk it arrived in through a name of no bytes, which a copy
    /// out of the read buffers (`Message::compacted`) then kept too.
    #[test]
    fn empty_names_hold_no_reference_to_the_payload() {
        // class, method, ticket, exchange "", routing key "", bits.
        let chunk = Bytes::from(vec![0, 60, 0, 40, 0, 0, 0, 0, 0]);
        let publish = parse_publish(chunk.slice(..)).expect("a publish");
        assert!(publish.exchange.is_empty() && publish.routing_key.is_empty());
        assert!(chunk.is_unique(), "nothing else holds the chunk");
    }

    #[test]
    fn a_routing_key_is_the_bytes_the_client_sent() {
        let chunk = Bytes::from(vec![0, 60, 0, 40, 0, 0, 1, b'x', 2, b'k', b'y', 1]);
        let publish = parse_publish(chunk.slice(..)).expect("a publish");
        assert_eq!(
            (&publish.exchange[..], &publish.routing_key[..]),
            (&b"x"[..], &b"ky"[..])
        );
        assert!(publish.mandatory && !publish.immediate);
        let short = chunk.slice(..chunk.len() - 1);
        assert_eq!(
            parse_publish(short.clone()),
            Err(short),
            "handed back when malformed"
        );
    }
}
