//! Bytes from a client, parsed in place: reads land in a buffer, complete frames are handed
//! out as slices of it (no copy), and only a frame that straddles two reads is copied.
//!
//! Every buffer whose slices may outlive the read (a frame kept as part of a message in a
//! queue) is a *chunk*: an allocation of its own, charged to the broker's memory gauge until
//! the last slice of it is dropped. So what clients make the broker hold is accounted exactly.
//! Reads go through a per-thread scratch buffer: a large read (at least half of it) becomes a
//! chunk as it is, a small one is copied into a chunk of exactly its size. A message that
//! arrived in a read of its own therefore keeps only its own bytes alive, and an idle
//! connection holds no buffer at all. A large frame that straddles reads (once its 7-byte
//! header is in) is completed by reading the rest of it straight into a buffer of that size,
//! however slowly it trickles in. A body frame's start stays where it was read, and the
//! frame is handed out as two slices, never copied (a body is a list of pieces); any other
//! frame's start is copied once into a buffer sized to the whole frame, where the rest is
//! read. A small frame (at most 4 KiB) that straddles is instead copied to the front of the
//! next read, which saves a read of its own.

use std::cell::RefCell;
use std::io;
use std::sync::Mutex;

use bytes::{Buf, Bytes};

use crate::broker::memory::{Charge, Memory};
use crate::net::Transport;
use crate::protocol::error::AmqpError;
use crate::protocol::frame::{
    FRAME_BODY, FRAME_END, FRAME_HEADER_LEN, FrameHeader, check_frame_end, peek_frame,
};

/// Reads below this many bytes are copied into a chunk of their own size; larger ones become
/// the chunk, so a chunk is never less than half full when it is made.
const COPY_READ_BELOW: usize = 32 * 1024;

/// Read buffers kept for reuse once every slice of them is gone: taking a fresh 64 KiB
/// allocation for every large read made the allocator hand pages back to the kernel and
/// fault them in again (40 times the page faults, a fifth of the CPU per message in the
/// autoack benchmark). Shared by all threads (a chunk is often dropped on another
/// connection's thread than the one that read it) and bounded, so an idle broker keeps at
/// most this many, uncharged.
const POOLED_BUFFERS: usize = 32;
/// Larger buffers (frames bigger than a read, completed in place) are not kept.
const MAX_POOLED_BUFFER_BYTES: usize = 256 * 1024;

/// How much a connection whose frames fill half of its reads reads at a time (large message
/// bodies). With 64 KiB reads a 64 KiB body frame nearly always straddles two reads and most
/// of it is copied once more: 256 KiB reads carried 40% more bytes per second of 64 KiB
/// messages (`benches/compare large-64k`). Only such connections read that much: for small
/// messages, larger reads measured slower (fanout -10%, a backlog's publish -20%) and pin
/// larger chunks.
const LARGE_READ_BYTES: usize = 256 * 1024;

/// A frame that straddles reads and is at most this large is carried along to the front of
/// the next full read, rather than completed by a read of its own: with 1 KiB messages and
/// 64 KiB reads nearly every read ends inside a frame, and completing each in place took a
/// second, tiny read every time, half of the connection's reads (`benches/compare confirm`,
/// a syscall trace of one cycle: 10 reads for 256 messages, 5 of them 588 bytes). A frame
/// that trickles in is copied again with each read, but never more than this many bytes per
/// read of at least one byte: a linear cost, a small fraction of the read's own.
const CARRY_FRAME_MAX_BYTES: usize = 4 * 1024;

/// Whether the start of a frame of `total` bytes that straddles reads goes to the front of
/// the next read (small, and leaving most of a read's buffer for new bytes) rather than into
/// a buffer of its own size.
fn carried_along(total: usize, read_bytes: usize) -> bool {
    total <= CARRY_FRAME_MAX_BYTES && total <= read_bytes / 4
}

static POOL: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

thread_local! {
    /// Where reads land on this thread; only ever borrowed inside one synchronous call.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Whether a buffer of `capacity` bytes is for large reads (see `LARGE_READ_BYTES`): the
/// pool keeps both sizes, and a read takes one of the size it asks for.
fn large(capacity: usize) -> bool {
    capacity >= LARGE_READ_BYTES
}

/// An empty buffer of at least `capacity` bytes, reused from the pool if it has one of that
/// size class.
fn pooled(capacity: usize) -> Vec<u8> {
    let reused = POOL.lock().ok().and_then(|mut p| {
        let at = p
            .iter()
            .rposition(|b| b.capacity() >= capacity && large(b.capacity()) == large(capacity))?;
        Some(p.swap_remove(at))
    });
    reused.unwrap_or_else(|| Vec::with_capacity(capacity))
}

/// Keeps a read buffer for reuse if it is of a size worth keeping and the pool has room.
fn recycle(mut data: Vec<u8>) {
    if !(COPY_READ_BELOW..=MAX_POOLED_BUFFER_BYTES).contains(&data.capacity()) {
        return;
    }
    data.clear();
    if let Ok(mut pool) = POOL.lock()
        && pool.len() < POOLED_BUFFERS
    {
        pool.push(data);
    }
}

/// Where input comes from: reads what is available into the spare capacity of `buf`, without
/// waiting (`Ok(0)` is end of stream, `WouldBlock` means nothing was there). The transport in
/// the broker; a byte slice cut into reads in the fuzzer.
pub trait ByteSource {
    fn read_into(&mut self, buf: &mut Vec<u8>) -> io::Result<usize>;
}

impl ByteSource for Transport {
    fn read_into(&mut self, buf: &mut Vec<u8>) -> io::Result<usize> {
        self.try_read_buf(buf)
    }
}

/// An allocation frames are sliced from, charged while any slice of it lives.
struct Chunk {
    data: Vec<u8>,
    /// A read buffer, of a size reads ask for: worth keeping for the next read. A buffer
    /// made to measure (a small read's copy, the rest of a frame that straddled reads) is
    /// not: no read would take one of its size, and kept, it would take a large read
    /// buffer's place in the pool.
    reuse: bool,
    _charge: Charge,
}

impl Drop for Chunk {
    /// A read buffer goes back to the pool, uncharged (the pool is small and bounded);
    /// buffers made to measure are freed.
    fn drop(&mut self) {
        if self.reuse {
            recycle(std::mem::take(&mut self.data));
        }
    }
}

impl AsRef<[u8]> for Chunk {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

/// A frame out of the input: its header and its payload, each a slice of the chunk it
/// arrived in. The payload is in one slice, except for a large body frame whose start and end
/// came in different reads: then `payload` is its start and `rest` its end, so that neither
/// is copied to join them (every other frame has no `rest`).
pub struct Frame {
    pub header: FrameHeader,
    pub payload: Bytes,
    pub rest: Option<Bytes>,
}

impl Frame {
    /// The payload in one slice: a split body frame's two slices copied together (for the
    /// paths that take a frame whole, none of them a well-behaved publisher's).
    pub fn joined(self) -> Bytes {
        let Some(rest) = self.rest else {
            return self.payload;
        };
        let mut whole = Vec::with_capacity(self.payload.len() + rest.len());
        whole.extend_from_slice(&self.payload);
        whole.extend_from_slice(&rest);
        Bytes::from(whole)
    }
}

/// A connection's unparsed input.
pub struct Input {
    /// The bytes read and not yet parsed: a slice of the last chunk.
    pending: Bytes,
    /// The start of a large body frame that straddles reads, left in the chunk it was read
    /// into (its header and what came of its payload) while the rest is read into
    /// `partial`. Copying it to complete the frame cost 5% of the broker's CPU with 64 KiB
    /// bodies, whose 256 KiB reads nearly all end inside a frame.
    head: Option<(FrameHeader, Bytes)>,
    /// A frame that straddles reads, being completed in a buffer of its exact size: all of
    /// it, or only its rest when its start is `head`.
    partial: Option<(Vec<u8>, Charge)>,
    /// How many bytes one read takes: the configured size, or `LARGE_READ_BYTES` once the
    /// client sent a frame larger than half of that.
    read_bytes: usize,
    memory: &'static Memory,
}

impl Input {
    pub fn new(read_bytes: usize, memory: &'static Memory) -> Self {
        Input {
            pending: Bytes::new(),
            head: None,
            partial: None,
            read_bytes: read_bytes.max(FRAME_HEADER_LEN + 1),
            memory,
        }
    }

    /// Bytes read and not yet parsed.
    pub fn len(&self) -> usize {
        self.pending.len()
            + self.head.as_ref().map_or(0, |(_, b)| b.len())
            + self.partial.as_ref().map_or(0, |(b, _)| b.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops what is unparsed (a connection that is closing reads no more frames).
    pub fn clear(&mut self) {
        self.pending = Bytes::new();
        self.head = None;
        self.partial = None;
    }

    /// A chunk of `data`, charged for its capacity while any slice of it lives; `reuse` if
    /// it is a read buffer (see `Chunk::reuse`).
    fn chunk(&self, data: Vec<u8>, reuse: bool) -> Bytes {
        let charge = Charge::new(self.memory, data.capacity());
        Bytes::from_owner(Chunk {
            data,
            reuse,
            _charge: charge,
        })
    }

    /// Reads what the transport has, after what is unparsed. `Ok(0)` is end of stream;
    /// `WouldBlock` means nothing was there.
    pub fn read(&mut self, transport: &mut impl ByteSource, frame_max: u32) -> io::Result<usize> {
        if self.partial.is_none()
            && self.head.is_none()
            && let Ok(Some(h)) = peek_frame(&self.pending, frame_max)
            && self.pending.len() < h.total_len()
            && !carried_along(h.total_len(), self.read_bytes)
        {
            if h.total_len() > self.read_bytes / 2 {
                // Frames this large straddle most reads of this size: read more at a time.
                self.read_bytes = self.read_bytes.max(LARGE_READ_BYTES);
            }
            let buf = if h.kind == FRAME_BODY {
                // No copy: the start stays in its chunk, the rest is read into a buffer of
                // its size.
                let rest = h.total_len() - self.pending.len();
                self.head = Some((h, std::mem::take(&mut self.pending)));
                Vec::with_capacity(rest)
            } else {
                // The one copy: the start of a frame that straddles reads, into a buffer
                // sized to the frame, where the rest of it will be read.
                let mut buf = Vec::with_capacity(h.total_len());
                buf.extend_from_slice(&std::mem::take(&mut self.pending));
                buf
            };
            // Charged for what has arrived, not for what the frame's header announced: a
            // client that announces large frames and sends a byte of each holds back no
            // memory it has not sent (the capacity is address space until written).
            let charge = Charge::new(self.memory, buf.len());
            self.partial = Some((buf, charge));
        }
        if let Some((buf, charge)) = self.partial.as_mut() {
            // Reads at most the rest of the frame: the buffer's capacity is what is missing.
            let read = transport.read_into(buf)?;
            charge.set(buf.len());
            if read > 0
                && buf.len() == buf.capacity()
                && let Some((done, _)) = self.partial.take()
            {
                self.pending = self.chunk(done, false);
            }
            return Ok(read);
        }
        let read_bytes = self.read_bytes;
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            scratch.clear();
            // A read fills the buffer: one of the size this connection reads (the thread's
            // buffer serves other connections too).
            if scratch.capacity() < read_bytes || large(scratch.capacity()) != large(read_bytes) {
                recycle(std::mem::replace(&mut *scratch, pooled(read_bytes)));
            }
            // At most a partial frame header, or a small frame's start (`carried_along`),
            // from the last read.
            scratch.extend_from_slice(&self.pending);
            let read = transport.read_into(&mut scratch)?;
            if read == 0 {
                return Ok(0);
            }
            self.pending = if scratch.len() >= COPY_READ_BELOW {
                self.chunk(std::mem::take(&mut *scratch), true)
            } else {
                self.chunk(scratch.as_slice().to_vec(), false)
            };
            Ok(read)
        })
    }

    /// Takes `n` bytes from the front (the protocol header), if they have arrived.
    pub fn take(&mut self, n: usize) -> Option<Bytes> {
        if self.partial.is_some() {
            return None;
        }
        if let Some((_, head)) = self.head.take() {
            // Bytes before the protocol header that looked like a large body frame's start
            // (a client sending something else): they come first, joined to what followed.
            let mut whole = Vec::with_capacity(head.len() + self.pending.len());
            whole.extend_from_slice(&head);
            whole.extend_from_slice(&self.pending);
            self.pending = self.chunk(whole, false);
        }
        (self.pending.len() >= n).then(|| self.pending.split_to(n))
    }

    /// Drops the first `n` bytes of `pending`. What is left empty lets go of its chunk, as
    /// `split_to` did: advanced to its end, an empty slice still held the chunk (and its
    /// charge) until the next read, which an idle connection may never make.
    fn consume(&mut self, n: usize) {
        if n >= self.pending.len() {
            self.pending = Bytes::new();
        } else {
            self.pending.advance(n);
        }
    }

    /// The next complete frame: its header and payload (a slice of the chunk it arrived in).
    /// `Ok(None)` when more bytes are needed. A frame larger than `frame_max` is refused
    /// from its 7-byte header.
    pub fn next_frame(&mut self, frame_max: u32) -> Result<Option<Frame>, AmqpError> {
        if self.head.is_some() {
            return self.next_split_frame();
        }
        let Some(header) = peek_frame(&self.pending, frame_max)? else {
            return Ok(None);
        };
        let total = header.total_len();
        if self.pending.len() < total {
            return Ok(None);
        }
        check_frame_end(&self.pending, &header)?;
        // One new reference to the chunk per frame, its payload's: a slice of the whole
        // frame first (`split_to`) took a second and dropped it again, and each is an atomic
        // operation on the chunk's count (6.6% of the broker's time under `confirm`).
        let payload = self
            .pending
            .slice(FRAME_HEADER_LEN..FRAME_HEADER_LEN + header.size as usize);
        self.consume(total);
        Ok(Some(Frame {
            header,
            payload,
            rest: None,
        }))
    }

    /// The next frame when a body frame's start is `head`: that frame, once its rest is read.
    /// Out of line, so that `next_frame`'s path for every other frame stays small.
    #[inline(never)]
    fn next_split_frame(&mut self) -> Result<Option<Frame>, AmqpError> {
        let Some((header, head)) = &self.head else {
            return Ok(None);
        };
        // The rest of a body frame whose start is `head`: all of `pending` once read.
        let need = header.total_len() - head.len();
        if self.pending.len() < need {
            return Ok(None);
        }
        if self.pending[need - 1] != FRAME_END {
            // The frame's end byte is wrong: the error names the payload's first bytes.
            let mut whole = head.to_vec();
            whole.extend_from_slice(&self.pending[..need]);
            check_frame_end(&whole, header)?;
        }
        let rest = self.pending.slice(..need - 1);
        self.consume(need);
        let Some((header, head)) = self.head.take() else {
            return Ok(None);
        };
        Ok(Some(Frame {
            header,
            payload: head.slice(FRAME_HEADER_LEN..),
            // Only the end byte was missing: the payload is whole in its first slice.
            rest: (!rest.is_empty()).then_some(rest),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client's bytes, handed over in reads as large as the reader's buffer takes (and at
    /// most `trickle` bytes at a time).
    struct Stream<'a> {
        data: &'a [u8],
        trickle: usize,
        /// The largest read asked for.
        largest_read: usize,

        /// Reads that returned bytes.
        reads: usize,
    }

    impl<'a> Stream<'a> {
        /// `data` in reads as large as the reader asks for.
        fn of(data: &'a [u8]) -> Self {
            Stream {
                data,
                trickle: usize::MAX,
                largest_read: 0,
                reads: 0,
            }
        }
    }

    impl ByteSource for Stream<'_> {
        fn read_into(&mut self, buf: &mut Vec<u8>) -> io::Result<usize> {
            let n = (buf.capacity() - buf.len())
                .min(self.data.len())
                .min(self.trickle);
            self.largest_read = self.largest_read.max(buf.capacity() - buf.len());
            self.reads += usize::from(n > 0);
            buf.extend_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    fn body_frame(out: &mut Vec<u8>, size: usize, fill: u8) {
        out.push(FRAME_BODY);
        out.extend_from_slice(&1u16.to_be_bytes());
        out.extend_from_slice(&(size as u32).to_be_bytes());
        out.extend(std::iter::repeat_n(fill, size));
        out.push(FRAME_END);
    }

    /// Reads `data` to its end; returns the body frames' sizes and fills, and the largest
    /// read the input asked for.
    fn read_all(data: &[u8]) -> (Vec<(usize, u8)>, usize) {
        let (frames, stream) = read_in(data, usize::MAX);
        (frames, stream.largest_read)
    }

    /// Reads `data` to its end, at most `trickle` bytes a read; returns the body frames'
    /// sizes and fills, and the stream (its reads).
    fn read_in(data: &[u8], trickle: usize) -> (Vec<(usize, u8)>, Stream<'_>) {
        let memory = Memory::leaked(usize::MAX);
        let mut input = Input::new(64 * 1024, memory);
        let mut stream = Stream {
            data,
            trickle,
            largest_read: 0,
            reads: 0,
        };
        let mut frames = Vec::new();
        while input.read(&mut stream, 1 << 20).expect("read") > 0 {
            while let Some(frame) = input.next_frame(1 << 20).expect("frame") {
                let payload = frame.joined();
                assert!(
                    payload.iter().all(|&b| b == payload[0]),
                    "a frame's bytes kept"
                );
                frames.push((payload.len(), payload[0]));
            }
        }
        (frames, stream)
    }

    fn body_frames(count: usize, size: usize) -> (Vec<u8>, Vec<(usize, u8)>) {
        let mut data = Vec::new();
        for i in 0..count {
            body_frame(&mut data, size, i as u8);
        }
        (data, (0..count).map(|i| (size, i as u8)).collect())
    }

    /// Regression: once the chunk's frames were taken, the input kept an empty slice of it,
    /// so a connection that went idle after a read held that read's buffer, charged, until a
    /// next read that might never come.
    #[test]
    fn an_input_whose_frames_are_all_taken_holds_no_chunk() {
        let memory = Memory::leaked(usize::MAX);
        let mut input = Input::new(64 * 1024, memory);
        let (data, _) = body_frames(40, 1000);
        let mut stream = Stream::of(&data);
        assert!(input.read(&mut stream, 1 << 20).expect("read") > 0);
        let frames: Vec<Frame> =
            std::iter::from_fn(|| input.next_frame(1 << 20).expect("frame")).collect();
        assert_eq!(frames.len(), 40);
        drop(frames);
        assert_eq!(
            memory.used(),
            0,
            "nothing charged once every frame is dropped"
        );
    }

    #[test]
    fn small_frames_that_straddle_reads_cost_no_read_of_their_own() {
        // 256 publishes' worth of 1 KiB frames: nearly every 64 KiB read ends inside one.
        let (data, expected) = body_frames(256, 1024);
        let (frames, stream) = read_in(&data, usize::MAX);
        assert_eq!(frames, expected);
        let full_reads = data.len().div_ceil(64 * 1024);
        assert!(
            stream.reads <= full_reads + 1,
            "{} reads for {} bytes",
            stream.reads,
            data.len()
        );
    }

    #[test]
    fn a_small_frame_trickling_in_arrives_whole() {
        for trickle in [1, 7, 100, 1023] {
            let (data, expected) = body_frames(40, 1024);
            let (frames, _) = read_in(&data, trickle);
            assert_eq!(frames, expected, "{trickle} bytes a read");
        }
    }

    #[test]
    fn large_frames_make_larger_reads_and_arrive_whole() {
        // 60 KiB bodies: frames that no pooled read buffer fits exactly (one of 64 KiB and
        // a frame's 8 bytes, left by another test, would take one frame a read, none
        // straddling).
        let mut data = Vec::new();
        for i in 0..20u8 {
            body_frame(&mut data, 60 * 1024, i);
        }
        let (frames, largest_read) = read_all(&data);
        assert_eq!(frames, (0..20).map(|i| (60 * 1024, i)).collect::<Vec<_>>());
        assert!(
            largest_read >= LARGE_READ_BYTES,
            "largest read {largest_read}"
        );
    }

    /// A frame's header announces its size; the memory charged for it is what has arrived.
    /// Before, the whole announced frame was charged at once: thousands of connections each
    /// sending the header of a 128 KiB frame and one byte counted as gigabytes, and queues
    /// paged to disk for memory nobody used.
    #[test]
    fn a_frame_announced_but_not_sent_is_charged_for_what_arrived() {
        let memory = Memory::leaked(usize::MAX);
        let mut input = Input::new(64 * 1024, memory);
        let mut data = Vec::new();
        for kind in [crate::protocol::frame::FRAME_METHOD, FRAME_BODY] {
            data.clear();
            data.push(kind);
            data.extend_from_slice(&1u16.to_be_bytes());
            data.extend_from_slice(&(100_000u32).to_be_bytes());
            data.extend_from_slice(&[0; 100]);
            let mut stream = Stream {
                data: &data,
                trickle: 8,
                largest_read: 0,
                reads: 0,
            };
            while input.read(&mut stream, 1 << 20).expect("read") > 0 {}
            assert!(
                memory.used() < 10_000,
                "{} bytes charged for 107 received",
                memory.used()
            );
            input.clear();
        }
    }

    #[test]
    fn large_body_frames_that_straddle_reads_are_not_copied() {
        // 64 KiB bodies in 256 KiB reads: nearly every read ends inside a body frame.
        let (data, expected) = body_frames(40, 64 * 1024);
        let mut input = Input::new(LARGE_READ_BYTES, Memory::leaked(usize::MAX));
        let mut stream = Stream::of(&data);
        let (mut frames, mut split) = (Vec::new(), 0);
        // Where every read landed: a frame's slices must point into these.
        let mut chunks: Vec<Bytes> = Vec::new();
        while input.read(&mut stream, 1 << 20).expect("read") > 0 {
            chunks.push(input.pending.clone());
            while let Some(frame) = input.next_frame(1 << 20).expect("frame") {
                for part in std::iter::once(&frame.payload).chain(&frame.rest) {
                    let inside = |c: &Bytes| {
                        let at = part.as_ptr() as usize;
                        let start = c.as_ptr() as usize;
                        start <= at && at + part.len() <= start + c.len()
                    };
                    assert!(
                        part.is_empty() || chunks.iter().any(inside),
                        "a copied slice"
                    );
                }
                split += usize::from(frame.rest.is_some());
                let payload = frame.joined();
                assert!(
                    payload.iter().all(|&b| b == payload[0]),
                    "a frame's bytes kept"
                );
                frames.push((payload.len(), payload[0]));
            }
        }
        assert_eq!(frames, expected);
        assert!(split > 0, "no frame straddled a read");
    }

    #[test]
    fn a_large_body_frame_trickling_in_arrives_whole() {
        for trickle in [1, 1000, 40_000, 100_000] {
            let (data, expected) = body_frames(6, 64 * 1024);
            let (frames, _) = read_in(&data, trickle);
            assert_eq!(frames, expected, "{trickle} bytes a read");
        }
    }

    #[test]
    fn a_split_body_frame_with_a_wrong_end_byte_is_a_frame_error() {
        let (mut data, _) = body_frames(8, 64 * 1024);
        // The end byte of the fourth frame, which straddles the first 256 KiB read.
        let frame = 64 * 1024 + 8;
        data[4 * frame - 1] = 0;
        let mut input = Input::new(LARGE_READ_BYTES, Memory::leaked(usize::MAX));
        let mut stream = Stream::of(&data);
        let mut good = 0;
        let error = loop {
            match input.next_frame(1 << 20) {
                Ok(Some(_)) => good += 1,
                Ok(None) => assert!(input.read(&mut stream, 1 << 20).expect("read") > 0),
                Err(e) => break e,
            }
        };
        assert_eq!(good, 3);
        assert!(
            error.text.contains("invalid_frame_end_marker"),
            "{}",
            error.text
        );
    }

    /// Reads of the sizes given, in turn.
    struct Cut<'a> {
        data: &'a [u8],
        sizes: &'a [usize],
        next: usize,
    }

    impl ByteSource for Cut<'_> {
        fn read_into(&mut self, buf: &mut Vec<u8>) -> io::Result<usize> {
            let size = self.sizes[self.next % self.sizes.len()];
            self.next += 1;
            let n = (buf.capacity() - buf.len()).min(self.data.len()).min(size);
            buf.extend_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    #[test]
    fn bytes_before_the_protocol_header_are_taken_in_order_even_if_they_look_like_a_frame() {
        // Seven bytes that read as a large body frame's header, in a read of their own, then
        // the rest: `take` sees the stream as it came.
        let mut data = vec![FRAME_BODY, 0, 1, 0, 0, 0x10, 0x00];
        data.extend((0..5000u32).map(|i| (i % 251) as u8));
        let mut input = Input::new(64 * 1024, Memory::leaked(usize::MAX));
        let mut stream = Stream::of(&data);
        stream.trickle = 7;
        assert_eq!(input.read(&mut stream, 4096).expect("read"), 7);
        assert!(input.take(8).is_none());
        stream.trickle = usize::MAX;
        let first = loop {
            if let Some(first) = input.take(8) {
                break first;
            }
            assert!(input.read(&mut stream, 4096).expect("read") > 0);
        };
        assert_eq!(&first[..], &data[..8]);
        let rest = input.take(100).expect("the bytes after");
        assert_eq!(&rest[..], &data[8..108]);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// However the reads fall, every frame comes out whole and in order, and only a body
        /// frame ever comes in two slices.
        #[test]
        fn frames_come_out_whole_however_reads_fall(
            frames in proptest::collection::vec((0u8..4, 0usize..150_000), 1..10),
            sizes in proptest::collection::vec(1usize..300_000, 1..20),
        ) {
            let mut data = Vec::new();
            let mut expected = Vec::new();
            for (n, &(kind, size)) in frames.iter().enumerate() {
                let kind = [1, 2, FRAME_BODY, 8][kind as usize];
                let payload: Vec<u8> = (0..size).map(|i| ((i * 7 + n * 31) % 251) as u8).collect();
                data.push(kind);
                data.extend_from_slice(&1u16.to_be_bytes());
                data.extend_from_slice(&(size as u32).to_be_bytes());
                data.extend_from_slice(&payload);
                data.push(FRAME_END);
                expected.push((kind, payload));
            }
            let mut input = Input::new(64 * 1024, Memory::leaked(usize::MAX));
            let mut cut = Cut { data: &data, sizes: &sizes, next: 0 };
            let mut got = Vec::new();
            loop {
                while let Some(frame) = input.next_frame(1 << 20).expect("a frame") {
                    let kind = frame.header.kind;
                    proptest::prop_assert!(frame.rest.is_none() || kind == FRAME_BODY);
                    got.push((kind, frame.joined().to_vec()));
                }
                if input.read(&mut cut, 1 << 20).expect("read") == 0 {
                    break;
                }
            }
            proptest::prop_assert!(got == expected, "{} frames of {}", got.len(), expected.len());
            proptest::prop_assert!(input.is_empty());
        }
    }

    #[test]
    fn small_frames_keep_the_configured_read_size() {
        let mut data = Vec::new();
        for i in 0..20_000u32 {
            body_frame(&mut data, 16, i as u8);
        }
        let (frames, largest_read) = read_all(&data);
        assert_eq!(frames.len(), 20_000);
        assert!(
            largest_read < LARGE_READ_BYTES,
            "largest read {largest_read}"
        );
    }
}
