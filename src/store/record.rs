//! The records of a queue log and their encoding.
//!
//! Every record is `len:u32 crc:u32 payload[len]`, where `crc` is the CRC-32 of the payload
//! XORed with its segment's [`Seal`] (which says whose record it is), and the payload starts
//! with `kind:u8 seq:u64`; message records go on with `flags:u8`, the expiry (`u64` Unix
//! milliseconds, only with [`FLAG_EXPIRES`]), the delivery count (`u32`, only with
//! [`FLAG_DELIVERY_COUNT`]), the exchange, routing key, raw properties and body; a held
//! marker goes on with its reason byte, a returned marker with the delivery count (`u32`),
//! other marks end there. Segments are preallocated
//! sparse (unwritten space reads as zeros), so a zero length marks the end of what was
//! written; a record whose checksum does not match, or that runs past the end of the
//! segment, is a torn write and ends the log.

use bytes::Bytes;

pub use super::seal::Seal;

/// Bytes before the payload: length and checksum.
pub const HEADER_LEN: usize = 8;

/// What a record says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// A persistent message of a durable queue: recovered after a restart until acked.
    Message = 1,
    /// A copy written to move a message out of memory; never recovered.
    Paged = 2,
    /// The durable message `seq` was acknowledged (or otherwise left the queue for good).
    Ack = 3,
    /// The message `seq` was delivered at least once: it comes back redelivered.
    Delivered = 5,
    /// The durable message `seq` is a dead letter its quorum queue holds until the queues it
    /// is routed to have it (at-least-once dead-lettering); a byte after the number says
    /// why it died. It comes back held, not ready.
    Held = 6,
    /// A quorum queue's durable message `seq` came back from a consumer to its place (its
    /// channel closed, its consumer was cancelled): its delivery count, a `u32` after the
    /// number, is what it comes back with.
    Returned = 7,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Message,
            2 => Kind::Paged,
            3 => Kind::Ack,
            5 => Kind::Delivered,
            6 => Kind::Held,
            7 => Kind::Returned,
            _ => return None,
        })
    }
}

/// A decoded record.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    Message {
        seq: u64,
        flags: u8,
        message: StoredMessage,
    },
    Paged {
        seq: u64,
        flags: u8,
        message: StoredMessage,
    },
    Ack {
        seq: u64,
    },
    Delivered {
        seq: u64,
    },
    Held {
        seq: u64,
        /// Why it died, in the broker's code: the store keeps the byte.
        reason: u8,
    },
    Returned {
        seq: u64,
        delivery_count: u32,
    },
}

/// Message-record flag: the message also has a durable `Message` record (acks must be logged).
pub const FLAG_PERSISTED: u8 = 1;
/// Message-record flag: the message was delivered before.
pub const FLAG_REDELIVERED: u8 = 2;
/// Message-record flag: an expiry time follows the flags.
pub const FLAG_EXPIRES: u8 = 4;
/// Message-record flag: a quorum queue's delivery count follows the expiry. (Records from
/// before this flag have none: their count is 0.)
pub const FLAG_DELIVERY_COUNT: u8 = 8;

/// What a message record says of its message besides the message's bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stamp {
    /// [`FLAG_PERSISTED`] and [`FLAG_REDELIVERED`]; the encoder sets the others.
    pub flags: u8,
    /// When the message expires in its queue (Unix milliseconds), if it has a TTL.
    pub expires_at: Option<u64>,
    /// Quorum queues: how often the message came back from consumers, so that its
    /// `x-delivery-count` and delivery limit survive paging and restarts. Written only when
    /// not 0.
    pub delivery_count: u32,
}

/// The parts of a message a log writes, borrowed from wherever the message lives. The store
/// knows nothing of the broker's message type: it keeps bytes.
#[derive(Debug, Clone, Copy)]
pub struct MessageParts<'a> {
    pub exchange: &'a [u8],
    pub routing_key: &'a [u8],
    pub properties: &'a [u8],
    /// The body's pieces, in order.
    pub body: &'a [Bytes],
}

impl MessageParts<'_> {
    /// The body's length in bytes.
    pub fn body_len(&self) -> usize {
        self.body.iter().map(Bytes::len).sum()
    }
}

/// The parts of a message a log keeps: enough to deliver it again byte for byte.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredMessage {
    pub exchange: Bytes,
    pub routing_key: Bytes,
    pub properties: Bytes,
    pub body: Bytes,
    /// When the message expires in its queue (Unix milliseconds), if it has a TTL.
    pub expires_at: Option<u64>,
    /// Quorum queues: how often the message came back from consumers (see [`Stamp`]).
    pub delivery_count: u32,
}

/// The exchange and routing key are short strings, on the wire and here: a longer routing
/// key (a dead-letter routing key set by argument or policy) is cut to this, as a delivery
/// cuts it.
const MAX_NAME_BYTES: usize = 255;

/// Bytes a message record of `message` takes, header included. It must be what
/// [`encode_message`] writes: the log places every later record by it.
pub fn message_len(message: &MessageParts, stamp: &Stamp) -> usize {
    HEADER_LEN
        + 1
        + 8
        + 1
        + if stamp.expires_at.is_some() { 8 } else { 0 }
        + if stamp.delivery_count > 0 { 4 } else { 0 }
        + 1
        + message.exchange.len().min(MAX_NAME_BYTES)
        + 1
        + message.routing_key.len().min(MAX_NAME_BYTES)
        + 4
        + message.properties.len()
        + 4
        + message.body_len()
}

fn finish(out: &mut [u8], start: usize, seal: Seal) {
    let payload = &out[start + HEADER_LEN..];
    let len = payload.len() as u32;
    let crc = crc32fast::hash(payload) ^ seal.value();
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_be_bytes());
}

fn begin(out: &mut Vec<u8>, kind: Kind, seq: u64) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER_LEN]);
    out.push(kind as u8);
    out.extend_from_slice(&seq.to_be_bytes());
    start
}

/// Appends a message record (durable or paged) for the segment sealed `seal`.
pub fn encode_message(
    out: &mut Vec<u8>,
    seal: Seal,
    kind: Kind,
    seq: u64,
    stamp: &Stamp,
    message: &MessageParts,
) {
    let start = begin(out, kind, seq);
    let mut flags = stamp.flags & !(FLAG_EXPIRES | FLAG_DELIVERY_COUNT);
    if stamp.expires_at.is_some() {
        flags |= FLAG_EXPIRES;
    }
    if stamp.delivery_count > 0 {
        flags |= FLAG_DELIVERY_COUNT;
    }
    out.push(flags);
    if let Some(at) = stamp.expires_at {
        out.extend_from_slice(&at.to_be_bytes());
    }
    if stamp.delivery_count > 0 {
        out.extend_from_slice(&stamp.delivery_count.to_be_bytes());
    }
    let short = |out: &mut Vec<u8>, s: &[u8]| {
        let n = s.len().min(MAX_NAME_BYTES);
        out.push(n as u8);
        out.extend_from_slice(&s[..n]);
    };
    short(out, message.exchange);
    short(out, message.routing_key);
    out.extend_from_slice(&(message.properties.len() as u32).to_be_bytes());
    out.extend_from_slice(message.properties);
    out.extend_from_slice(&(message.body_len() as u32).to_be_bytes());
    for piece in message.body {
        out.extend_from_slice(piece);
    }
    finish(out, start, seal);
}

/// Appends an ack or a delivered marker for the segment sealed `seal`.
pub fn encode_mark(out: &mut Vec<u8>, seal: Seal, kind: Kind, seq: u64) {
    let start = begin(out, kind, seq);
    finish(out, start, seal);
}

/// Bytes an ack or delivered marker takes.
pub const MARK_LEN: usize = HEADER_LEN + 9;

/// Appends a held marker (see [`Kind::Held`]) for the segment sealed `seal`.
pub fn encode_held(out: &mut Vec<u8>, seal: Seal, seq: u64, reason: u8) {
    let start = begin(out, Kind::Held, seq);
    out.push(reason);
    finish(out, start, seal);
}

/// Bytes a held marker takes: a mark and its reason.
pub const HELD_LEN: usize = MARK_LEN + 1;

/// Appends a returned marker (see [`Kind::Returned`]) for the segment sealed `seal`.
pub fn encode_returned(out: &mut Vec<u8>, seal: Seal, seq: u64, delivery_count: u32) {
    let start = begin(out, Kind::Returned, seq);
    out.extend_from_slice(&delivery_count.to_be_bytes());
    finish(out, start, seal);
}

/// Bytes a returned marker takes: a mark and its count.
pub const RETURNED_LEN: usize = MARK_LEN + 4;

/// What reading at an offset found.
#[derive(Debug, PartialEq)]
pub enum Decoded {
    /// A record and the bytes it took, header included.
    Record(Record, usize),
    /// Zeros: nothing was written here yet.
    End,
    /// Bytes that are not a whole, intact record: a torn or corrupted write.
    Torn,
}

/// The kind, sequence number and total length of the record at the start of `buf`, without
/// decoding (or checking) its payload. None at the end of the written data.
pub fn peek(buf: &[u8]) -> Option<(Kind, u64, usize)> {
    let len = u32::from_be_bytes(buf.get(0..4)?.try_into().ok()?) as usize;
    if len == 0 {
        return None;
    }
    let kind = Kind::from_u8(*buf.get(HEADER_LEN)?)?;
    let seq = u64::from_be_bytes(buf.get(HEADER_LEN + 1..HEADER_LEN + 9)?.try_into().ok()?);
    Some((kind, seq, HEADER_LEN + len))
}

/// Decodes the record at the start of `buf`, read from the segment sealed `seal`. `buf`
/// holds the record's bytes as a shared buffer so message parts can be sliced without
/// copying.
pub fn decode(buf: &Bytes, seal: Seal) -> Decoded {
    decode_at(buf, 0, seal)
}

/// Decodes the record at `buf[at..]`: a reader walking a buffer of many records slices only
/// the parts of the messages it keeps.
pub fn decode_at(buf: &Bytes, at: usize, seal: Seal) -> Decoded {
    decode_checked(buf, at, seal, false)
}

/// Decodes the record at the start of `buf` as recovery does when it resynchronises past
/// damage, byte by byte through what may be message bodies: a record of a segment from
/// before keys must be sealed, not merely checksummed (see [`Seal::accepts`]).
pub fn decode_resynchronising(buf: &Bytes, seal: Seal) -> Decoded {
    decode_checked(buf, 0, seal, true)
}

fn decode_checked(buf: &Bytes, at: usize, seal: Seal, resynchronising: bool) -> Decoded {
    let rest = buf.get(at..).unwrap_or_default();
    let Some(header) = rest.get(0..HEADER_LEN) else {
        return if rest.iter().all(|&b| b == 0) {
            Decoded::End
        } else {
            Decoded::Torn
        };
    };
    let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
    if len == 0 {
        return if crc == 0 {
            Decoded::End
        } else {
            Decoded::Torn
        };
    }
    let Some(payload) = rest.get(HEADER_LEN..HEADER_LEN + len) else {
        return Decoded::Torn;
    };
    if !seal.accepts(crc32fast::hash(payload), crc, resynchronising) || len < 9 {
        return Decoded::Torn;
    }
    let Some(kind) = Kind::from_u8(payload[0]) else {
        return Decoded::Torn;
    };
    let seq = u64::from_be_bytes(payload[1..9].try_into().unwrap_or([0; 8]));
    // The message's parts are found by offsets into `buf`; only the four it keeps are sliced
    // out of the shared buffer (each slice is an atomic reference count).
    let start = at + HEADER_LEN + 9;
    let end = at + HEADER_LEN + len;
    let record = match kind {
        Kind::Message | Kind::Paged => {
            let Some(&flags) = buf.get(start).filter(|_| start < end) else {
                return Decoded::Torn;
            };
            let Some((expires_at, delivery_count, rest)) = decode_stamp(buf, flags, start + 1, end)
            else {
                return Decoded::Torn;
            };
            let Some(mut message) = decode_message(buf, rest, end) else {
                return Decoded::Torn;
            };
            message.expires_at = expires_at;
            message.delivery_count = delivery_count;
            if kind == Kind::Message {
                Record::Message {
                    seq,
                    flags,
                    message,
                }
            } else {
                Record::Paged {
                    seq,
                    flags,
                    message,
                }
            }
        }
        Kind::Ack => Record::Ack { seq },
        Kind::Delivered => Record::Delivered { seq },
        Kind::Held => match buf.get(start) {
            Some(&reason) if start + 1 == end => Record::Held { seq, reason },
            _ => return Decoded::Torn,
        },
        Kind::Returned => match buf.get(start..end) {
            Some(&[a, b, c, d]) => Record::Returned {
                seq,
                delivery_count: u32::from_be_bytes([a, b, c, d]),
            },
            _ => return Decoded::Torn,
        },
    };
    Decoded::Record(record, HEADER_LEN + len)
}

/// The expiry and delivery count that `flags` say follow at `buf[at..end]`, and where the
/// message starts after them.
fn decode_stamp(
    buf: &Bytes,
    flags: u8,
    mut at: usize,
    end: usize,
) -> Option<(Option<u64>, u32, usize)> {
    let mut take = |n: usize| -> Option<&[u8]> {
        let to = at.checked_add(n).filter(|&to| to <= end)?;
        let bytes = buf.get(at..to)?;
        at = to;
        Some(bytes)
    };
    let expires_at = match flags & FLAG_EXPIRES {
        0 => None,
        _ => Some(u64::from_be_bytes(take(8)?.try_into().ok()?)),
    };
    let delivery_count = match flags & FLAG_DELIVERY_COUNT {
        0 => 0,
        _ => u32::from_be_bytes(take(4)?.try_into().ok()?),
    };
    Some((expires_at, delivery_count, at))
}

/// The message whose encoding is `buf[at..end]`.
fn decode_message(buf: &Bytes, mut at: usize, end: usize) -> Option<StoredMessage> {
    let p = buf.get(..end)?;
    // The offsets of the next `n` bytes, advancing past them.
    let mut take = |n: usize| -> Option<std::ops::Range<usize>> {
        let to = at.checked_add(n).filter(|&to| to <= p.len())?;
        let range = at..to;
        at = to;
        Some(range)
    };
    let n = usize::from(p[take(1)?.start]);
    let exchange = take(n)?;
    let n = usize::from(p[take(1)?.start]);
    let routing_key = take(n)?;
    let n = u32::from_be_bytes(p[take(4)?].try_into().ok()?) as usize;
    let properties = take(n)?;
    let n = u32::from_be_bytes(p[take(4)?].try_into().ok()?) as usize;
    let body = take(n)?;
    Some(StoredMessage {
        exchange: buf.slice(exchange),
        routing_key: buf.slice(routing_key),
        properties: buf.slice(properties),
        body: buf.slice(body),
        expires_at: None,
        delivery_count: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLAIN: Stamp = Stamp {
        flags: 0,
        expires_at: None,
        delivery_count: 0,
    };

    /// The keyed seal of segment `segment` under some key.
    fn seal(segment: u64) -> Seal {
        Seal::Keyed((segment as u32).wrapping_mul(0x2545_F491) | 1)
    }

    /// Regression: a routing key past 255 bytes was cut when written but counted whole, so
    /// every later record of the segment was placed past where it was written (paging
    /// read from the wrong offset and skipped the rest of the segment).
    #[test]
    fn a_record_with_a_long_routing_key_is_as_long_as_its_length_says() {
        let key = vec![b'k'; 300];
        let body = [Bytes::from_static(b"body")];
        let m = MessageParts {
            exchange: b"ex",
            routing_key: &key,
            properties: &[],
            body: &body,
        };
        let mut out = Vec::new();
        encode_message(&mut out, seal(1), Kind::Message, 7, &PLAIN, &m);
        assert_eq!(out.len(), message_len(&m, &PLAIN));
        let Decoded::Record(Record::Message { message, .. }, len) =
            decode(&Bytes::from(out), seal(1))
        else {
            panic!("decodes");
        };
        assert_eq!(len, message_len(&m, &PLAIN));
        assert_eq!(message.routing_key.len(), 255);
    }

    fn message(body: &[Bytes]) -> MessageParts<'_> {
        MessageParts {
            exchange: b"ex",
            routing_key: b"rk",
            properties: &[0x10, 0, 2],
            body,
        }
    }

    #[test]
    fn records_round_trip() {
        let mut out = Vec::new();
        let body = [Bytes::from_static(b"hel"), Bytes::from_static(b"lo")];
        let m = message(&body);
        encode_message(
            &mut out,
            seal(3),
            Kind::Message,
            7,
            &Stamp {
                flags: FLAG_PERSISTED,
                ..PLAIN
            },
            &m,
        );
        assert_eq!(out.len(), message_len(&m, &PLAIN));
        let paged = Stamp {
            expires_at: Some(1234),
            delivery_count: 3,
            ..PLAIN
        };
        encode_message(&mut out, seal(3), Kind::Paged, 9, &paged, &m);
        assert_eq!(out.len(), message_len(&m, &PLAIN) + message_len(&m, &paged));
        encode_mark(&mut out, seal(3), Kind::Ack, 7);
        encode_mark(&mut out, seal(3), Kind::Delivered, 8);
        encode_held(&mut out, seal(3), 9, 2);
        encode_returned(&mut out, seal(3), 10, 70_000);
        let buf = Bytes::from(out);
        let Decoded::Record(
            Record::Message {
                seq,
                flags,
                message,
            },
            n,
        ) = decode(&buf, seal(3))
        else {
            panic!("message");
        };
        assert_eq!((seq, flags), (7, FLAG_PERSISTED));
        assert_eq!(&message.body[..], b"hello");
        assert_eq!((message.expires_at, message.delivery_count), (None, 0));
        assert_eq!(&message.properties[..], &[0x10, 0, 2]);
        let rest = buf.slice(n..);
        let Decoded::Record(
            Record::Paged {
                seq: 9, message, ..
            },
            m,
        ) = decode(&rest, seal(3))
        else {
            panic!("paged");
        };
        assert_eq!(
            (message.expires_at, message.delivery_count),
            (Some(1234), 3)
        );
        let rest = rest.slice(m..);
        let Decoded::Record(Record::Ack { seq: 7 }, k) = decode(&rest, seal(3)) else {
            panic!("ack");
        };
        assert_eq!(k, MARK_LEN);
        let rest = rest.slice(k..);
        assert_eq!(
            decode(&rest, seal(3)),
            Decoded::Record(Record::Delivered { seq: 8 }, MARK_LEN)
        );
        let rest = rest.slice(MARK_LEN..);
        assert_eq!(
            decode(&rest, seal(3)),
            Decoded::Record(Record::Held { seq: 9, reason: 2 }, HELD_LEN)
        );
        assert_eq!(
            decode(&rest.slice(HELD_LEN..), seal(3)),
            Decoded::Record(
                Record::Returned {
                    seq: 10,
                    delivery_count: 70_000
                },
                RETURNED_LEN
            )
        );
    }

    /// A held or returned marker without what follows its number is torn, though its
    /// checksum matches.
    #[test]
    fn a_marker_without_its_payload_is_torn() {
        for kind in [Kind::Held, Kind::Returned] {
            let mut out = Vec::new();
            encode_mark(&mut out, seal(3), kind, 9);
            assert_eq!(decode(&Bytes::from(out), seal(3)), Decoded::Torn);
        }
    }

    /// A record written before the delivery count had a field reads with a count of 0; one
    /// with a count and no expiry reads its count; one that says it has a count and stops
    /// short is torn.
    #[test]
    fn a_delivery_count_reads_back_with_or_without_an_expiry() {
        let body = [Bytes::from_static(b"x")];
        let counted = Stamp {
            delivery_count: 7,
            ..PLAIN
        };
        let mut out = Vec::new();
        encode_message(&mut out, seal(3), Kind::Paged, 1, &counted, &message(&body));
        assert_eq!(out.len(), message_len(&message(&body), &counted));
        let Decoded::Record(Record::Paged { flags, message, .. }, _) =
            decode(&Bytes::from(out.clone()), seal(3))
        else {
            panic!("paged");
        };
        assert_eq!(flags & FLAG_DELIVERY_COUNT, FLAG_DELIVERY_COUNT);
        assert_eq!((message.delivery_count, message.expires_at), (7, None));
        // The same payload cut off inside the count, with a length and checksum to match.
        let mut short = out[..HEADER_LEN + 1 + 8 + 1 + 2].to_vec();
        let len = (short.len() - HEADER_LEN) as u32;
        short[..4].copy_from_slice(&len.to_be_bytes());
        let crc = crc32fast::hash(&short[HEADER_LEN..]) ^ seal(3).value();
        short[4..8].copy_from_slice(&crc.to_be_bytes());
        assert_eq!(decode(&Bytes::from(short), seal(3)), Decoded::Torn);
    }

    #[test]
    fn zeros_end_the_log_and_damage_is_torn() {
        assert_eq!(decode(&Bytes::from(vec![0u8; 64]), seal(3)), Decoded::End);
        let mut out = Vec::new();
        encode_message(
            &mut out,
            seal(3),
            Kind::Message,
            1,
            &PLAIN,
            &message(&[Bytes::from_static(b"x")]),
        );
        let mut bad = out.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert_eq!(decode(&Bytes::from(bad), seal(3)), Decoded::Torn);
        out.truncate(out.len() - 3);
        assert_eq!(decode(&Bytes::from(out), seal(3)), Decoded::Torn);
    }

    #[test]
    fn a_record_reads_only_in_the_segment_it_was_sealed_for() {
        // A reused segment file's earlier records must read as the end of the log.
        let mut out = Vec::new();
        encode_message(
            &mut out,
            seal(5),
            Kind::Message,
            1,
            &PLAIN,
            &message(&[Bytes::from_static(b"x")]),
        );
        let buf = Bytes::from(out);
        assert!(matches!(decode(&buf, seal(5)), Decoded::Record(..)));
        assert_eq!(decode(&buf, seal(6)), Decoded::Torn);
        assert_eq!(decode(&buf, seal(0)), Decoded::Torn);
    }

    #[test]
    fn records_from_before_the_seal_still_read_in_a_segment_from_before_keys() {
        // A data directory written by an earlier Lepus: a plain CRC-32 of the payload.
        let mut out = Vec::new();
        encode_mark(&mut out, Seal::legacy(4), Kind::Ack, 7);
        let payload_crc = crc32fast::hash(&out[HEADER_LEN..]);
        out[4..8].copy_from_slice(&payload_crc.to_be_bytes());
        let buf = Bytes::from(out);
        assert_eq!(
            decode(&buf, Seal::legacy(4)),
            Decoded::Record(Record::Ack { seq: 7 }, MARK_LEN)
        );
        // Never where recovery looks byte by byte, nor in a keyed segment.
        assert_eq!(decode_resynchronising(&buf, Seal::legacy(4)), Decoded::Torn);
        assert_eq!(decode(&buf, seal(4)), Decoded::Torn);
    }

    /// Regression: a keyed segment read a record sealed the old way (with the segment
    /// number alone), or not sealed at all, as its own. Where a reused file's new records
    /// end, the next bytes may be an old body a publisher wrote, and such a record there
    /// was taken as the queue's.
    #[test]
    fn a_keyed_segment_reads_only_records_sealed_with_its_key() {
        let mut out = Vec::new();
        encode_mark(&mut out, Seal::legacy(4), Kind::Ack, 7);
        let buf = Bytes::from(out);
        assert!(matches!(decode(&buf, Seal::legacy(4)), Decoded::Record(..)));
        assert_eq!(decode(&buf, seal(4)), Decoded::Torn);
    }

    #[test]
    fn a_record_decodes_in_place_among_others() {
        let mut out = Vec::new();
        encode_message(
            &mut out,
            seal(3),
            Kind::Message,
            1,
            &PLAIN,
            &message(&[Bytes::from_static(b"first")]),
        );
        let second = out.len();
        encode_message(
            &mut out,
            seal(3),
            Kind::Paged,
            2,
            &Stamp {
                expires_at: Some(99),
                ..PLAIN
            },
            &message(&[Bytes::from_static(b"second")]),
        );
        let buf = Bytes::from(out);
        let Decoded::Record(Record::Paged { seq, message, .. }, n) =
            decode_at(&buf, second, seal(3))
        else {
            panic!("the second record");
        };
        assert_eq!((seq, n), (2, buf.len() - second));
        assert_eq!(&message.body[..], b"second");
        assert_eq!(&message.routing_key[..], b"rk");
        assert_eq!(message.expires_at, Some(99));
    }

    #[test]
    fn a_message_record_without_a_message_is_torn_not_read_from_its_neighbour() {
        // A checksummed record of kind Message whose payload stops after its sequence
        // number, followed by a whole record: the parts are not looked for in the next one.
        let mut out = Vec::new();
        encode_mark(&mut out, seal(3), Kind::Message, 1);
        encode_message(
            &mut out,
            seal(3),
            Kind::Message,
            2,
            &PLAIN,
            &message(&[Bytes::from_static(b"next")]),
        );
        let buf = Bytes::from(out);
        assert_eq!(decode(&buf, seal(3)), Decoded::Torn);
    }
}
