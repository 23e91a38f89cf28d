//! Bytes from a client, parsed in place: reads land in a buffer, complete frames are handed
//! out as slices of it (no copy), and only a frame that straddles two reads is copied.
//!
//! Every buffer whose slices may outlive the read (a frame kept as part of a message in a
//! queue) is a *chunk*: an allocation of its own, charged to the broker's memory gauge until
//! the last slice of it is dropped. So what clients make the broker hold is accounted exactly.
//! Reads go through a per-thread scratch buffer: a large read (at least half of it) becomes a
//! chunk as it is, a small one is copied into a chunk of exactly its size. A message that
//! arrived in a read of its own therefore keeps only its own bytes alive, and an idle
//! connection holds no buffer at all. A frame that straddles reads (once its 7-byte header is
//! in) is copied once into a buffer sized to the frame, and the rest of it is read straight
//! into that buffer: however slowly a large frame trickles in, each byte is copied once.

use std::cell::RefCell;
use std::io;
use std::sync::Mutex;

use bytes::Bytes;

use crate::broker::memory::{Charge, Memory};
use crate::net::Transport;
use crate::protocol::error::AmqpError;
use crate::protocol::frame::{FRAME_HEADER_LEN, FrameHeader, check_frame_end, peek_frame};

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

static POOL: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

thread_local! {
    /// Where reads land on this thread; only ever borrowed inside one synchronous call.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// An empty buffer of at least `capacity` bytes, reused from the pool if it has one.
fn pooled(capacity: usize) -> Vec<u8> {
    let reused = POOL.lock().ok().and_then(|mut p| p.pop());
    match reused {
        Some(buf) if buf.capacity() >= capacity => buf,
        _ => Vec::with_capacity(capacity),
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
    _charge: Charge,
}

impl Drop for Chunk {
    /// A large read buffer goes back to the pool, uncharged (the pool is small and
    /// bounded); small ones, made to measure, are freed.
    fn drop(&mut self) {
        let capacity = self.data.capacity();
        if !(COPY_READ_BELOW..=MAX_POOLED_BUFFER_BYTES).contains(&capacity) {
            return;
        }
        let mut data = std::mem::take(&mut self.data);
        data.clear();
        if let Ok(mut pool) = POOL.lock()
            && pool.len() < POOLED_BUFFERS
        {
            pool.push(data);
        }
    }
}

impl AsRef<[u8]> for Chunk {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

/// A connection's unparsed input.
pub struct Input {
    /// The bytes read and not yet parsed: a slice of the last chunk.
    pending: Bytes,
    /// A frame that straddles reads, being completed in a buffer of its exact size.
    partial: Option<(Vec<u8>, Charge)>,
    /// How many bytes one read takes at most.
    read_bytes: usize,
    memory: &'static Memory,
}

impl Input {
    pub fn new(read_bytes: usize, memory: &'static Memory) -> Self {
        Input {
            pending: Bytes::new(),
            partial: None,
            read_bytes: read_bytes.max(FRAME_HEADER_LEN + 1),
            memory,
        }
    }

    /// Bytes read and not yet parsed.
    pub fn len(&self) -> usize {
        self.pending.len() + self.partial.as_ref().map_or(0, |(b, _)| b.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops what is unparsed (a connection that is closing reads no more frames).
    pub fn clear(&mut self) {
        self.pending = Bytes::new();
        self.partial = None;
    }

    /// A chunk of `data`, charged for its capacity while any slice of it lives.
    fn chunk(&self, data: Vec<u8>) -> Bytes {
        let charge = Charge::new(&self.memory, data.capacity());
        Bytes::from_owner(Chunk {
            data,
            _charge: charge,
        })
    }

    /// Reads what the transport has, after what is unparsed. `Ok(0)` is end of stream;
    /// `WouldBlock` means nothing was there.
    pub fn read(&mut self, transport: &mut impl ByteSource, frame_max: u32) -> io::Result<usize> {
        if self.partial.is_none()
            && let Ok(Some(h)) = peek_frame(&self.pending, frame_max)
            && self.pending.len() < h.total_len()
        {
            // The one copy: the start of a frame that straddles reads, into a buffer sized
            // to the frame, where the rest of it will be read.
            let mut buf = Vec::with_capacity(h.total_len());
            buf.extend_from_slice(&self.pending);
            let charge = Charge::new(&self.memory, buf.capacity());
            self.pending = Bytes::new();
            self.partial = Some((buf, charge));
        }
        if let Some((buf, _)) = self.partial.as_mut() {
            // Reads at most the rest of the frame: the buffer's capacity is the frame.
            let read = transport.read_into(buf)?;
            if read > 0 && buf.len() == buf.capacity() {
                if let Some((done, _)) = self.partial.take() {
                    self.pending = self.chunk(done);
                }
            }
            return Ok(read);
        }
        let read_bytes = self.read_bytes;
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            scratch.clear();
            if scratch.capacity() < read_bytes {
                *scratch = pooled(read_bytes);
            }
            // At most a partial frame header, from the last read.
            scratch.extend_from_slice(&self.pending);
            let read = transport.read_into(&mut scratch)?;
            if read == 0 {
                return Ok(0);
            }
            let data = if scratch.len() >= COPY_READ_BELOW {
                std::mem::take(&mut *scratch)
            } else {
                scratch.as_slice().to_vec()
            };
            self.pending = self.chunk(data);
            Ok(read)
        })
    }

    /// Takes `n` bytes from the front (the protocol header), if they have arrived.
    pub fn take(&mut self, n: usize) -> Option<Bytes> {
        (self.pending.len() >= n).then(|| self.pending.split_to(n))
    }

    /// The next complete frame: its header and payload (a slice of the chunk it arrived in).
    /// `Ok(None)` when more bytes are needed. A frame larger than `frame_max` is refused
    /// from its 7-byte header.
    pub fn next_frame(
        &mut self,
        frame_max: u32,
    ) -> Result<Option<(FrameHeader, Bytes)>, AmqpError> {
        let Some(header) = peek_frame(&self.pending, frame_max)? else {
            return Ok(None);
        };
        let total = header.total_len();
        if self.pending.len() < total {
            return Ok(None);
        }
        check_frame_end(&self.pending, &header)?;
        let frame = self.pending.split_to(total);
        Ok(Some((
            header,
            frame.slice(FRAME_HEADER_LEN..FRAME_HEADER_LEN + header.size as usize),
        )))
    }
}
