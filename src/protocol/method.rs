//! The cold path: every method that is not publish, deliver or acknowledge is decoded and
//! encoded with amq-protocol. These run once per declare, consume or channel open, so clarity
//! wins over speed here.

use amq_protocol::frame::WriteContext;
use amq_protocol::protocol::{AMQPClass, gen_class, parse_class};

use super::frame::{FRAME_METHOD, FrameWriter};
use super::table::{MAX_TABLE_DEPTH, TableError, check_depth};

/// Why a method frame could not be turned into a method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MethodError {
    /// Fewer than four bytes: not even a class and method id.
    NoIds,
    /// A class/method pair AMQP 0-9-1 does not define.
    Unknown { class_id: u16, method_id: u16 },
    /// A known method whose fields do not decode.
    Malformed { class_id: u16, method_id: u16 },
    /// A known method that would decode but for a short string that is not UTF-8.
    NotUtf8 { class_id: u16, method_id: u16 },
    /// A field table in its arguments nests deeper than [`MAX_TABLE_DEPTH`].
    TooDeep { class_id: u16, method_id: u16 },
}

/// The fields before and around the field tables of the methods that have any, in wire
/// order: what [`check_tables`] walks to find the tables.
#[derive(Debug, Clone, Copy)]
enum Field {
    Octet,
    Short,
    ShortStr,
    LongStr,
    Table,
}

/// The field layout of every AMQP 0-9-1 method that carries a field table. Consecutive bits
/// pack into one octet.
fn table_fields(class_id: u16, method_id: u16) -> &'static [Field] {
    use Field::*;
    match (class_id, method_id) {
        (10, 10) => &[Octet, Octet, Table, LongStr, LongStr],
        (10, 11) => &[Table, ShortStr, LongStr, ShortStr],
        (40, 10) => &[Short, ShortStr, ShortStr, Octet, Table],
        (40, 30) | (40, 40) | (50, 20) => &[Short, ShortStr, ShortStr, ShortStr, Octet, Table],
        (50, 10) => &[Short, ShortStr, Octet, Table],
        (50, 50) => &[Short, ShortStr, ShortStr, ShortStr, Table],
        (60, 20) => &[Short, ShortStr, ShortStr, Octet, Table],
        _ => &[],
    }
}

/// Checks the nesting depth of a method's field tables before amq-protocol decodes them
/// (recursively). A malformed payload is left for the decoder to refuse.
fn check_tables(payload: &[u8], fields: &[Field]) -> Result<(), TableError> {
    let mut at = 4usize;
    for field in fields {
        let rest = payload.get(at..).ok_or(TableError::Malformed)?;
        at += match field {
            Field::Octet => 1,
            Field::Short => 2,
            Field::ShortStr => 1 + *rest.first().ok_or(TableError::Malformed)? as usize,
            Field::LongStr => {
                let b = rest.get(..4).ok_or(TableError::Malformed)?;
                4 + u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize
            }
            Field::Table => check_depth(rest, MAX_TABLE_DEPTH)?,
        };
    }
    Ok(())
}

/// Reads the class and method id at the start of a method payload.
pub fn method_ids(payload: &[u8]) -> Option<(u16, u16)> {
    if payload.len() < 4 {
        return None;
    }
    Some((
        u16::from_be_bytes([payload[0], payload[1]]),
        u16::from_be_bytes([payload[2], payload[3]]),
    ))
}

/// Whether AMQP 0-9-1 defines method `class_id.method_id`.
pub fn is_known(class_id: u16, method_id: u16) -> bool {
    let methods: &[u16] = match class_id {
        10 => &[10, 11, 20, 21, 30, 31, 40, 41, 50, 51, 60, 61, 70, 71],
        20 => &[10, 11, 20, 21, 40, 41],
        30 => &[10, 11],
        40 => &[10, 11, 20, 21, 30, 31, 40, 51],
        50 => &[10, 11, 20, 21, 30, 31, 40, 41, 50, 51],
        60 => &[
            10, 11, 20, 21, 30, 31, 40, 50, 60, 70, 71, 72, 80, 90, 100, 110, 111, 120,
        ],
        85 => &[10, 11],
        90 => &[10, 11, 20, 21, 30, 31],
        _ => &[],
    };
    methods.contains(&method_id)
}

/// Decodes a method payload with amq-protocol.
pub fn parse_method(payload: &[u8]) -> Result<AMQPClass, MethodError> {
    let (class_id, method_id) = method_ids(payload).ok_or(MethodError::NoIds)?;
    if !is_known(class_id, method_id) {
        return Err(MethodError::Unknown {
            class_id,
            method_id,
        });
    }
    if let Err(TableError::TooDeep) = check_tables(payload, table_fields(class_id, method_id)) {
        return Err(MethodError::TooDeep {
            class_id,
            method_id,
        });
    }
    match parse_class(payload) {
        Ok(([], method)) => Ok(method),
        _ if decodes_but_for_utf8(payload) => Err(MethodError::NotUtf8 {
            class_id,
            method_id,
        }),
        _ => Err(MethodError::Malformed {
            class_id,
            method_id,
        }),
    }
}

/// Whether a payload that does not decode would, with its non-ASCII bytes made ASCII: then
/// what failed is a string's UTF-8 (amq-protocol checks short strings), as lengths, ids and
/// flags that happened to hold such bytes would (nearly always) fail again. It is a guess
/// for the reply's text only (both texts close the connection with 501): a table or long
/// string 128-255 bytes long beside the bad string makes it say "cannot decode". Only a
/// payload that failed is copied, once.
fn decodes_but_for_utf8(payload: &[u8]) -> bool {
    if payload.is_ascii() {
        return false;
    }
    let ascii: Vec<u8> = payload
        .iter()
        .map(|&b| if b.is_ascii() { b } else { b'?' })
        .collect();
    matches!(parse_class(ascii.as_slice()), Ok(([], _)))
}

/// Appends a method frame for `method` on `channel`.
pub fn write_method(out: &mut Vec<u8>, channel: u16, method: &AMQPClass) {
    let start = out.begin_frame(FRAME_METHOD, channel);
    // Generating into a Vec cannot run out of room; the only failure amq-protocol reports for
    // it is a value outside its type, which the broker never builds. Should it happen anyway,
    // the frame is dropped rather than sent half-written.
    match gen_class(method)(WriteContext::from(Vec::with_capacity(64))) {
        Ok(ctx) => {
            out.extend_from_slice(&ctx.write);
            out.end_frame(start);
        }
        Err(err) => {
            tracing::error!(?err, ?method, "could not encode a method; frame dropped");
            out.truncate(start);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::protocol::channel;

    #[test]
    fn round_trips_a_cold_method() {
        let method = AMQPClass::Channel(channel::AMQPMethod::OpenOk(channel::OpenOk {}));
        let mut out = Vec::new();
        write_method(&mut out, 3, &method);
        assert_eq!(out[0], FRAME_METHOD);
        let payload = &out[7..out.len() - 1];
        assert_eq!(parse_method(payload), Ok(method));
    }

    #[test]
    fn unknown_and_malformed_are_told_apart() {
        assert_eq!(
            parse_method(&[0, 77, 0, 10]),
            Err(MethodError::Unknown {
                class_id: 77,
                method_id: 10
            })
        );
        // channel.open with its short string cut off
        assert_eq!(
            parse_method(&[0, 20, 0, 10, 5, b'a']),
            Err(MethodError::Malformed {
                class_id: 20,
                method_id: 10
            })
        );
        // queue.declare of a name that is not UTF-8, and one also cut off
        let declare = |name: &[u8], len: u8| {
            let mut p = vec![0, 50, 0, 10, 0, 0, len];
            p.extend_from_slice(name);
            p.extend_from_slice(&[0, 0, 0, 0, 0]);
            parse_method(&p)
        };
        assert_eq!(
            declare(b"q\xff", 2),
            Err(MethodError::NotUtf8 {
                class_id: 50,
                method_id: 10
            })
        );
        assert!(matches!(
            declare(b"q\xff", 200),
            Err(MethodError::Malformed { .. })
        ));
    }
}
