//! Frame splitting: the first thing every byte from a client goes through.
//!
//! A frame is `type:u8 channel:u16 size:u32 payload[size] 0xCE`. [`peek_frame`] reads the
//! 7-byte header in place and refuses a frame larger than the negotiated `frame_max` before a
//! single payload byte is buffered, so a peer that announces a 4 GiB frame costs nothing.

use crate::amqp_error;
use crate::protocol::error::AmqpError;

pub const FRAME_METHOD: u8 = 1;
pub const FRAME_HEADER: u8 = 2;
pub const FRAME_BODY: u8 = 3;
pub const FRAME_HEARTBEAT: u8 = 8;
pub const FRAME_END: u8 = 0xCE;

/// The 7-byte frame header.
pub const FRAME_HEADER_LEN: usize = 7;
/// Header plus the frame-end octet: what a frame costs beyond its payload.
pub const FRAME_OVERHEAD: usize = 8;

/// The only protocol header Lepus speaks, and what it answers to any other.
pub const PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";

/// The parsed 7-byte frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Frame type: method, content header, content body or heartbeat.
    pub kind: u8,
    /// Channel number; 0 is the connection itself.
    pub channel: u16,
    /// Payload length in bytes, excluding header and frame-end.
    pub size: u32,
}

impl FrameHeader {
    /// Bytes the whole frame occupies in the read buffer.
    pub fn total_len(&self) -> usize {
        self.size as usize + FRAME_OVERHEAD
    }
}

/// Reads the frame header at the start of `buf`.
///
/// Returns `Ok(None)` when fewer than 7 bytes are buffered. `frame_max` is the negotiated
/// maximum frame size (0 means unlimited). Like RabbitMQ, a frame is refused only when its
/// payload alone exceeds `frame_max`, and the text reports `frame_max - 8`.
pub fn peek_frame(buf: &[u8], frame_max: u32) -> Result<Option<FrameHeader>, AmqpError> {
    if buf.len() < FRAME_HEADER_LEN {
        return Ok(None);
    }
    let header = FrameHeader {
        kind: buf[0],
        channel: u16::from_be_bytes([buf[1], buf[2]]),
        size: u32::from_be_bytes([buf[3], buf[4], buf[5], buf[6]]),
    };
    if frame_max != 0 && header.size > frame_max {
        return Err(amqp_error!(
            FrameError,
            "type {}, all octets = <<>>: {{frame_too_large,{},{}}}",
            header.kind,
            header.size,
            frame_max.saturating_sub(FRAME_OVERHEAD as u32)
        ));
    }
    Ok(Some(header))
}

/// Checks the frame-end octet of a complete frame at the start of `buf`.
#[inline]
pub fn check_frame_end(buf: &[u8], header: &FrameHeader) -> Result<(), AmqpError> {
    let end = header.size as usize + FRAME_HEADER_LEN;
    match buf.get(end) {
        Some(&FRAME_END) => Ok(()),
        found => Err(frame_end_error(buf, header, found.copied())),
    }
}

/// The error for a frame whose end octet is wrong or missing: out of line, so that the check
/// on every frame stays small enough to inline.
#[cold]
#[inline(never)]
fn frame_end_error(buf: &[u8], header: &FrameHeader, found: Option<u8>) -> AmqpError {
    let end = header.size as usize + FRAME_HEADER_LEN;
    match found {
        Some(other) => {
            let prefix = octets_description(header.kind, &buf[FRAME_HEADER_LEN..end]);
            // RabbitMQ pretty-prints the reason term at the column where it starts, and wraps
            // it after the comma when it would pass column 79.
            let column = prefix.len() + 2;
            let term = format!("{{invalid_frame_end_marker,{other}}}");
            let reason = if column + term.len() >= 79 {
                format!(
                    "{{invalid_frame_end_marker,\n{}{other}}}",
                    " ".repeat(column + 1)
                )
            } else {
                term
            };
            amqp_error!(FrameError, "{}: {}", prefix, reason)
        }
        None => amqp_error!(FrameError, "truncated frame"),
    }
}

/// `type 1, all octets = <<...>>` (or `first 16 octets` for longer payloads), the way
/// RabbitMQ describes a frame it refuses.
pub fn octets_description(kind: u8, payload: &[u8]) -> String {
    let (which, shown) = if payload.len() <= 16 {
        ("all", payload)
    } else {
        ("first 16", &payload[..16])
    };
    format!("type {kind}, {which} octets = {}", erlang_binary(shown))
}

/// Formats bytes as Erlang's `~p` prints a binary: `<<"text">>` when every byte is printable,
/// `<<1,2,3>>` otherwise.
pub fn erlang_binary(bytes: &[u8]) -> String {
    let printable = |b: u8| matches!(b, 32..=126 | 8..=13 | 27);
    if bytes.is_empty() {
        return "<<>>".into();
    }
    if bytes.iter().all(|&b| printable(b)) {
        let mut out = String::from("<<\"");
        for &b in bytes {
            match b {
                b'"' => out.push_str("\\\""),
                b'\\' => out.push_str("\\\\"),
                b'\n' => out.push_str("\\n"),
                b'\t' => out.push_str("\\t"),
                b'\r' => out.push_str("\\r"),
                8 => out.push_str("\\b"),
                11 => out.push_str("\\v"),
                12 => out.push_str("\\f"),
                27 => out.push_str("\\e"),
                b => out.push(b as char),
            }
        }
        out.push_str("\">>");
        return out;
    }
    erlang_numeric_binary(bytes)
}

/// Formats bytes as Erlang's `~w` prints a binary: always `<<1,2,3>>`.
pub fn erlang_numeric_binary(bytes: &[u8]) -> String {
    let mut out = String::from("<<");
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&b.to_string());
    }
    out.push_str(">>");
    out
}

/// Appends frames to an output buffer. Every frame the broker sends is written through here,
/// so a whole batch of frames goes to the socket in one write.
pub trait FrameWriter {
    /// Starts a frame and returns the offset to hand to [`FrameWriter::end_frame`].
    fn begin_frame(&mut self, kind: u8, channel: u16) -> usize;
    /// Patches the size of the frame started at `start` and appends the frame-end octet.
    fn end_frame(&mut self, start: usize);
}

impl FrameWriter for Vec<u8> {
    #[inline]
    fn begin_frame(&mut self, kind: u8, channel: u16) -> usize {
        let start = self.len();
        self.push(kind);
        self.extend_from_slice(&channel.to_be_bytes());
        self.extend_from_slice(&[0, 0, 0, 0]);
        start
    }

    #[inline]
    fn end_frame(&mut self, start: usize) {
        let size = (self.len() - start - FRAME_HEADER_LEN) as u32;
        self[start + 3..start + 7].copy_from_slice(&size.to_be_bytes());
        self.push(FRAME_END);
    }
}

/// Appends a heartbeat frame.
pub fn write_heartbeat(out: &mut Vec<u8>) {
    out.extend_from_slice(&[FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, FRAME_END]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incomplete_header_asks_for_more() {
        assert_eq!(peek_frame(&[1, 0, 1], 4096).unwrap(), None);
    }

    #[test]
    fn oversized_frame_is_refused_from_the_header_alone() {
        let header = [FRAME_BODY, 0, 1, 0xFF, 0xFF, 0xFF, 0xFF];
        let err = peek_frame(&header, 131072).unwrap_err();
        assert_eq!(err.code.code(), 501);
    }

    #[test]
    fn same_as_rabbitmq_frame_max_limits_the_payload() {
        let fits = [FRAME_BODY, 0, 1, 0, 0, 0x10, 0x00]; // payload of exactly 4096
        assert!(peek_frame(&fits, 4096).unwrap().is_some());
        let too_big = [FRAME_METHOD, 0, 1, 0, 0, 0x10, 0x01];
        assert_eq!(
            peek_frame(&too_big, 4096).unwrap_err().text,
            "FRAME_ERROR - type 1, all octets = <<>>: {frame_too_large,4097,4088}"
        );
    }

    #[test]
    fn same_as_rabbitmq_bad_frame_end_text() {
        let frame = [1, 0, 0, 0, 0, 0, 11, 0, 60, 0, 10, 0, 0, 0, 0, 0, 10, 0, 0];
        let header = peek_frame(&frame, 4096).unwrap().unwrap();
        let err = check_frame_end(&frame, &header).unwrap_err();
        assert_eq!(
            err.text,
            format!(
                "FRAME_ERROR - type 1, all octets = <<0,60,0,10,0,0,0,0,0,10,0>>: {{invalid_frame_end_marker,\n{}0}}",
                " ".repeat(52)
            )
        );
    }

    #[test]
    fn erlang_binaries_print_like_erlang() {
        assert_eq!(erlang_binary(b"abc"), "<<\"abc\">>");
        assert_eq!(erlang_binary(&[0, 60]), "<<0,60>>");
        assert_eq!(erlang_binary(b""), "<<>>");
    }

    #[test]
    fn writer_patches_the_size() {
        let mut out = Vec::new();
        let start = out.begin_frame(FRAME_BODY, 7);
        out.extend_from_slice(b"abc");
        out.end_frame(start);
        assert_eq!(out, [3, 0, 7, 0, 0, 0, 3, b'a', b'b', b'c', FRAME_END]);
    }
}
