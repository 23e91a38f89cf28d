//! Frames waiting for the socket.
//!
//! Everything a connection sends is appended here and written in as few system calls as
//! possible: small frames are copied into one growing buffer, large message bodies are not
//! copied at all but queued as shared slices and written with vectored I/O.

use std::collections::VecDeque;
use std::io::IoSlice;

use bytes::Bytes;

use crate::broker::body::Body;
use crate::protocol::basic;
use crate::protocol::frame::{FRAME_BODY, FRAME_END, FRAME_OVERHEAD, FrameWriter, write_heartbeat};

/// Bodies at least this large are sent from the message's own buffer instead of being copied.
const SHARE_BODY_BYTES: usize = 16 * 1024;
/// The output buffer an idle connection may keep.
const KEEP_BUFFER_BYTES: usize = 64 * 1024;
/// Slices handed to one vectored write.
const MAX_IOVECS: usize = 64;

enum Segment {
    Owned(Vec<u8>),
    Shared(Bytes),
}

impl Segment {
    fn bytes(&self) -> &[u8] {
        match self {
            Segment::Owned(v) => v,
            Segment::Shared(b) => b,
        }
    }
}

/// Writes held back for an epoch the store failed to sync: they were dropped, unsent, and
/// the connection must report the failure.
#[derive(Debug)]
pub struct HeldWritesFailed;

/// The output side of a connection.
#[derive(Default)]
pub struct Output {
    /// Complete segments, oldest first.
    segments: VecDeque<Segment>,
    /// The segment being appended to.
    tail: Vec<u8>,
    /// Bytes of the front segment already written.
    written: usize,
    /// Bytes waiting in all segments and the tail.
    len: usize,
    /// Capacity beyond their length of the owned segments: a sealed tail keeps its spare
    /// capacity, and comes back as the tail once written.
    sealed_spare: usize,
    /// Bytes written to the socket since the connection started.
    sent: u64,
    /// Stream offsets from which output must wait until the store has synced an epoch:
    /// a reply that promises durability (declare-ok of a durable queue, tx.commit-ok) is
    /// held back, with everything after it, until what it promises is on disk.
    holds: VecDeque<(u64, u64)>,
}

impl Output {
    /// The buffer small frames are encoded into.
    #[inline]
    pub fn buf(&mut self) -> &mut Vec<u8> {
        &mut self.tail
    }

    /// Bytes waiting to be written.
    #[inline]
    pub fn len(&self) -> usize {
        // `written` counts bytes of the front segment (or of the tail, when it is the only
        // thing left) that already went out.
        self.len + self.tail.len() - self.written
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Holds back everything appended from now on until the store has synced `epoch`.
    pub fn hold_until_synced(&mut self, epoch: Option<u64>) {
        if let Some(epoch) = epoch {
            let at = self.sent + self.len() as u64;
            self.holds.push_back((at, epoch));
        }
    }

    /// Lets go of holds whose epoch is synced. A hold whose writes failed (`failed` says
    /// which epochs did) is not let go: everything from it on is dropped, unsent, and the
    /// error is returned for the connection to report.
    pub fn release_holds(
        &mut self,
        synced: u64,
        failed: impl Fn(u64) -> bool,
    ) -> Result<(), HeldWritesFailed> {
        while let Some(&(at, epoch)) = self.holds.front() {
            if epoch > synced {
                break;
            }
            if failed(epoch) {
                self.truncate_at(at);
                return Err(HeldWritesFailed);
            }
            self.holds.pop_front();
        }
        Ok(())
    }

    /// Drops what was appended from stream offset `at` on, and the holds there.
    fn truncate_at(&mut self, at: u64) {
        let keep = at.saturating_sub(self.sent) as usize;
        let mut kept = Vec::with_capacity(keep);
        // Everything before the first hold is writable, so `slices` reaches it all (in
        // rounds of MAX_IOVECS slices).
        while kept.len() < keep {
            let added = {
                let mut iov = [IoSlice::new(&[]); MAX_IOVECS];
                let n = self.slices(&mut iov);
                let before = kept.len();
                for s in &iov[..n] {
                    let take = s.len().min(keep - kept.len());
                    kept.extend_from_slice(&s[..take]);
                }
                kept.len() - before
            };
            if added == 0 {
                break;
            }
            // Advance past what was copied without counting it as sent.
            let sent = self.sent;
            self.consume(added);
            self.sent = sent;
        }
        self.segments.clear();
        self.sealed_spare = 0;
        self.len = 0;
        self.written = 0;
        self.tail = kept;
        self.holds.retain(|&(h, _)| h < at);
    }

    /// Whether some output waits for a sync.
    pub fn has_holds(&self) -> bool {
        !self.holds.is_empty()
    }

    /// Bytes that may be written now.
    pub fn writable_len(&self) -> usize {
        match self.holds.front() {
            Some(&(at, _)) => at.saturating_sub(self.sent) as usize,
            None => self.len(),
        }
    }

    /// Queues a heartbeat frame, unless output already waits for the client to read it (a
    /// heartbeat would only queue behind it); returns whether it was queued. Output held
    /// back for a sync does not wait for the client: the heartbeat goes ahead of it, where
    /// what was written stops (a frame boundary, since a hold starts between frames), so a
    /// client keeps hearing from a broker whose disk holds a reply back, as RabbitMQ's
    /// heartbeat sender writes to the socket past its writer.
    pub fn heartbeat(&mut self) -> bool {
        if self.is_empty() && self.holds.is_empty() {
            write_heartbeat(&mut self.tail);
            return true;
        }
        if self.writable_len() > 0 {
            return false;
        }
        // Everything before the first hold went out; make the held rest start a segment.
        self.seal();
        if self.written > 0 {
            let written = std::mem::take(&mut self.written);
            match self.segments.front_mut() {
                Some(Segment::Owned(v)) => {
                    v.drain(..written);
                    self.sealed_spare += written;
                }
                Some(Segment::Shared(b)) => {
                    let _ = b.split_to(written);
                }
                None => {}
            }
            self.len -= written;
        }
        let mut frame = Vec::new();
        write_heartbeat(&mut frame);
        let added = frame.len();
        self.len += added;
        self.sealed_spare += frame.capacity() - added;
        self.segments.push_front(Segment::Owned(frame));
        // Every hold starts at or after what was sent, so the heartbeat is ahead of all.
        for (at, _) in self.holds.iter_mut() {
            *at += added as u64;
        }
        true
    }

    /// Appends a message's content header and body frames. Large bodies are queued by
    /// reference: each body frame is its header, the slices of the body's pieces it covers,
    /// and its end byte (a frame may span pieces when this consumer's `frame_max` differs
    /// from the publisher's).
    pub fn content(&mut self, channel: u16, properties: &[u8], body: &Body, frame_max: u32) {
        if body.len() < SHARE_BODY_BYTES {
            match body.as_one() {
                Some(one) => {
                    basic::write_content(&mut self.tail, channel, properties, one, frame_max)
                }
                None => {
                    let whole = body.contiguous();
                    basic::write_content(&mut self.tail, channel, properties, &whole, frame_max);
                }
            }
            return;
        }
        basic::write_content(&mut self.tail, channel, properties, &[], frame_max);
        // write_content wrote a header declaring a zero-length body; patch the body size.
        let size_at = self.tail.len() - 1 - properties.len() - 8;
        self.tail[size_at..size_at + 8].copy_from_slice(&(body.len() as u64).to_be_bytes());
        let chunk = if frame_max == 0 {
            body.len()
        } else {
            (frame_max as usize).saturating_sub(FRAME_OVERHEAD).max(1)
        };
        let mut pieces = body.parts().iter();
        // What is left to send of the piece being sent.
        let mut piece = pieces.next().cloned().unwrap_or_default();
        let mut left = body.len();
        while left > 0 {
            let size = chunk.min(left);
            let start = self.tail.begin_frame(FRAME_BODY, channel);
            self.tail[start + 3..start + 7].copy_from_slice(&(size as u32).to_be_bytes());
            self.seal();
            let mut need = size;
            while need > 0 {
                if piece.is_empty() {
                    match pieces.next() {
                        Some(p) => piece = p.clone(),
                        // Unreachable: the pieces add up to the body's length.
                        None => break,
                    }
                }
                let take = need.min(piece.len());
                self.len += take;
                self.segments
                    .push_back(Segment::Shared(piece.split_to(take)));
                need -= take;
            }
            self.tail.push(FRAME_END);
            left -= size;
        }
    }

    /// Moves the tail into the segment list.
    fn seal(&mut self) {
        if !self.tail.is_empty() {
            let tail = std::mem::take(&mut self.tail);
            self.len += tail.len();
            self.sealed_spare += tail.capacity() - tail.len();
            self.segments.push_back(Segment::Owned(tail));
        }
    }

    /// Fills `slices` with what to write next; returns how many were filled.
    pub fn slices<'a>(&'a self, slices: &mut [IoSlice<'a>; MAX_IOVECS]) -> usize {
        let mut budget = self.writable_len();
        let mut n = 0;
        let mut parts = self
            .segments
            .iter()
            .enumerate()
            .map(|(i, seg)| {
                let bytes = seg.bytes();
                if i == 0 {
                    &bytes[self.written..]
                } else {
                    bytes
                }
            })
            .chain(std::iter::once(if self.segments.is_empty() {
                &self.tail[self.written.min(self.tail.len())..]
            } else {
                &self.tail[..]
            }));
        while n < MAX_IOVECS && budget > 0 {
            let Some(bytes) = parts.next() else {
                break;
            };
            if bytes.is_empty() {
                continue;
            }
            let take = bytes.len().min(budget);
            budget -= take;
            slices[n] = IoSlice::new(&bytes[..take]);
            n += 1;
        }
        n
    }

    /// Records that `n` bytes were written to the socket.
    pub fn consume(&mut self, mut n: usize) {
        self.sent += n as u64;
        while n > 0 {
            let Some(front) = self.segments.front() else {
                // Writing from the tail itself.
                self.written += n;
                if self.written >= self.tail.len() {
                    self.tail.clear();
                    self.written = 0;
                }
                return;
            };
            let left = front.bytes().len() - self.written;
            if n < left {
                self.written += n;
                return;
            }
            n -= left;
            self.len -= front.bytes().len();
            self.written = 0;
            if let Some(Segment::Owned(mut v)) = self.segments.pop_front() {
                self.sealed_spare -= v.capacity() - v.len();
                if self.tail.is_empty() && v.capacity() > self.tail.capacity() {
                    // Keep the larger allocation for the next frames.
                    v.clear();
                    self.tail = v;
                }
            }
        }
    }

    /// Bytes this output keeps: what waits, and the buffer frames are encoded into, used
    /// or not (it is kept after a burst; see [`Output::shrink`]).
    pub fn memory(&self) -> usize {
        self.len + self.sealed_spare + self.tail.capacity()
    }

    /// Whether output is empty and holds a buffer [`Output::shrink`] would free.
    pub fn holds_large_buffer(&self) -> bool {
        self.is_empty() && self.tail.capacity() > KEEP_BUFFER_BYTES
    }

    /// Releases memory after a burst: an idle connection should not hold a large buffer.
    pub fn shrink(&mut self) {
        if self.holds_large_buffer() {
            self.tail = Vec::new();
        }
    }

    /// Drops everything not yet written.
    pub fn clear(&mut self) {
        self.sent += self.len() as u64;
        self.segments.clear();
        self.sealed_spare = 0;
        self.tail.clear();
        self.written = 0;
        self.len = 0;
        self.holds.clear();
    }
}

/// An array to hand to [`Output::slices`].
pub fn iovecs<'a>() -> [IoSlice<'a>; MAX_IOVECS] {
    [IoSlice::new(&[]); MAX_IOVECS]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A burst's buffer is kept while output waits, and freed by `shrink` once it is all
    /// written; a small one is kept.
    #[test]
    fn a_burst_buffer_is_freed_only_once_empty() {
        let mut out = Output::default();
        out.buf().extend_from_slice(&[7u8; 200 * 1024]);
        assert!(!out.holds_large_buffer());
        out.shrink();
        assert_eq!(out.len(), 200 * 1024, "nothing written is dropped");
        out.consume(200 * 1024);
        assert!(out.holds_large_buffer());
        assert!(out.memory() >= 200 * 1024, "a kept buffer is counted");
        out.shrink();
        assert!(!out.holds_large_buffer());
        assert_eq!(out.buf().capacity(), 0);
        assert_eq!(out.memory(), 0);
        out.buf().extend_from_slice(&[7u8; 1024]);
        out.consume(1024);
        out.shrink();
        assert!(out.buf().capacity() >= 1024, "a small buffer is kept");
    }

    /// A large body seals the buffer small frames were encoded into, with its spare
    /// capacity: that is still memory the output keeps, until written.
    #[test]
    fn a_sealed_buffer_counts_its_spare_capacity() {
        let mut out = Output::default();
        out.buf().reserve(1 << 20);
        out.buf().extend_from_slice(&[7u8; 100]);
        let capacity = out.buf().capacity();
        out.content(
            1,
            &[0, 0],
            &Body::from(Bytes::from(vec![1u8; 64 * 1024])),
            131_072,
        );
        assert!(out.memory() >= capacity + 64 * 1024, "{}", out.memory());
        let all = out.len();
        out.consume(all);
        assert!(out.is_empty());
        assert_eq!(
            out.memory(),
            out.buf().capacity(),
            "what is left is counted once"
        );
    }

    #[test]
    fn held_output_waits_for_its_epoch() {
        let mut out = Output::default();
        out.buf().extend_from_slice(b"before");
        out.hold_until_synced(Some(7));
        out.buf().extend_from_slice(b"after");
        assert_eq!(out.writable_len(), 6);
        let mut v = iovecs();
        let n = out.slices(&mut v);
        assert_eq!(v[..n].iter().map(|s| s.len()).sum::<usize>(), 6);
        out.consume(6);
        assert_eq!(out.writable_len(), 0);
        out.release_holds(6, |_| false).unwrap();
        assert_eq!(out.writable_len(), 0);
        out.release_holds(7, |_| false).unwrap();
        assert_eq!(out.writable_len(), 5);
    }

    /// A heartbeat due while a reply waits for the disk goes out ahead of it; one due while
    /// the client has not read what it was sent waits, as before.
    #[test]
    fn a_heartbeat_goes_ahead_of_held_output_only() {
        let mut hb = Vec::new();
        write_heartbeat(&mut hb);
        for (written, body) in [(6, 0), (3, 0), (3, 64 * 1024), (6, 64 * 1024)] {
            let mut out = Output::default();
            out.buf().extend_from_slice(b"before");
            if body > 0 {
                // A shared body before the hold, so the written part is in a segment.
                out.content(1, &[0, 0], &Body::from(Bytes::from(vec![1u8; body])), 0);
            }
            let before = out.len();
            out.hold_until_synced(Some(7));
            out.buf().extend_from_slice(b"after");
            if written < before {
                assert!(!out.heartbeat(), "the client has not read what it was sent");
                let all = drain_writable(&mut out);
                assert_eq!(all.len(), before);
            } else {
                out.consume(written);
            }
            assert_eq!(out.writable_len(), 0);
            assert!(
                out.heartbeat(),
                "held output does not hold a heartbeat back"
            );
            assert_eq!(drain_writable(&mut out), hb);
            assert_eq!(out.writable_len(), 0, "the reply still waits for the disk");
            out.release_holds(7, |_| false).unwrap();
            assert_eq!(drain_writable(&mut out), b"after");
            assert!(out.is_empty());
            assert_eq!(out.memory(), out.buf().capacity(), "body {body}");
        }
    }

    /// A hold with nothing after it yet (a nowait durable declare) is passed too, and a
    /// heartbeat that went ahead of a hold whose sync failed is kept: it is before it.
    #[test]
    fn a_heartbeat_goes_ahead_of_an_empty_hold_and_survives_its_failure() {
        let mut hb = Vec::new();
        write_heartbeat(&mut hb);
        let mut out = Output::default();
        out.hold_until_synced(Some(3));
        assert!(out.heartbeat());
        assert_eq!(out.writable_len(), hb.len(), "not behind the hold");
        out.hold_until_synced(Some(4));
        out.buf().extend_from_slice(b"promise");
        assert!(!out.heartbeat(), "the first heartbeat is not written yet");
        assert!(out.release_holds(4, |epoch| epoch == 4).is_err());
        assert_eq!(drain_writable(&mut out), hb);
        assert!(out.is_empty(), "what the failed epoch promised is dropped");
    }

    /// Writes what may be written now, in one-byte steps.
    fn drain_writable(out: &mut Output) -> Vec<u8> {
        let mut all = Vec::new();
        while out.writable_len() > 0 {
            let mut v = iovecs();
            let n = out.slices(&mut v);
            let first = v[..n].iter().find(|s| !s.is_empty()).map(|s| s[0]);
            let Some(byte) = first else { break };
            all.push(byte);
            out.consume(1);
        }
        all
    }

    fn drain(out: &mut Output, step: usize) -> Vec<u8> {
        let mut all = Vec::new();
        while !out.is_empty() {
            let mut v = iovecs();
            let n = out.slices(&mut v);
            let mut taken = 0;
            for s in &v[..n] {
                let room = step - taken;
                let k = s.len().min(room);
                all.extend_from_slice(&s[..k]);
                taken += k;
                if taken == step {
                    break;
                }
            }
            out.consume(taken);
        }
        all
    }

    #[test]
    fn large_bodies_come_out_identical_to_copied_ones() {
        let whole = Bytes::from((0..100_000u32).map(|i| i as u8).collect::<Vec<_>>());
        let body = Body::from(whole.clone());
        let mut shared = Output::default();
        shared.buf().extend_from_slice(b"before");
        shared.content(1, &[0, 0], &body, 4096);
        shared.buf().extend_from_slice(b"after");
        let mut copied = Vec::new();
        copied.extend_from_slice(b"before");
        basic::write_content(&mut copied, 1, &[0, 0], &whole, 4096);
        copied.extend_from_slice(b"after");
        assert_eq!(shared.len(), copied.len());
        for step in [1, 7, 4096, 1 << 20] {
            let mut out = Output::default();
            out.buf().extend_from_slice(b"before");
            out.content(1, &[0, 0], &body, 4096);
            out.buf().extend_from_slice(b"after");
            assert_eq!(drain(&mut out, step), copied, "step {step}");
        }
    }

    #[test]
    fn a_body_in_pieces_goes_out_as_if_it_were_one() {
        // Pieces that do not line up with this consumer's frames (the publisher's frame_max
        // was different): frames span pieces, and the bytes are the same as a copy's.
        let whole = Bytes::from((0..100_000u32).map(|i| (i % 251) as u8).collect::<Vec<_>>());
        let pieces = [0, 17_000, 30_000, 65_536, 99_999, 100_000]
            .windows(2)
            .map(|w| whole.slice(w[0]..w[1]))
            .collect();
        let body = Body::from_parts(pieces);
        assert_eq!(body.parts().len(), 5);
        for frame_max in [4096, 131_072, 0] {
            let mut copied = Vec::new();
            basic::write_content(&mut copied, 1, &[0, 0], &whole, frame_max);
            let mut out = Output::default();
            out.content(1, &[0, 0], &body, frame_max);
            assert_eq!(out.len(), copied.len(), "frame_max {frame_max}");
            for step in [1, 4096, 1 << 20] {
                let mut out = Output::default();
                out.content(1, &[0, 0], &body, frame_max);
                assert_eq!(
                    drain(&mut out, step),
                    copied,
                    "frame_max {frame_max} step {step}"
                );
            }
        }
    }
}
