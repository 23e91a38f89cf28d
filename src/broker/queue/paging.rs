//! Paging: a FIFO queue over its share of the memory budget moves the newest part of its
//! ready messages into a log (its *tail*) and reads them back in order as the head drains.
//! A durable queue pages into its own log; a transient queue gets a paging log when it first
//! needs one. Every message in the tail comes after every message in `ready`, and after
//! every message out with consumers (which may come back). The tail is
//! read back ahead of need and outside the queue's lock, except when the head is empty.

use std::sync::Arc;

use super::context::QueueCtx;
use super::entry::QueueEntry;
use super::state::{PAGE_IN_BATCH, PAGE_IN_BELOW, PAGE_KEEP, ReadAhead, ReadJob, State, Tail};
use crate::broker::memory::{Memory, charged_buffer};
use crate::broker::message::Message;
use crate::store::{Position, ReadBack, TailReader};

impl State {
    /// Moves the newest part of `ready` into the log, keeping a window in memory.
    pub fn page_out(&mut self, ctx: &QueueCtx) {
        if self.tail.is_some() || self.deleted || self.ready.prioritised() {
            return;
        }
        let mut keep = 0usize;
        let mut kept = 0usize;
        for e in self.ready.iter() {
            if kept + e.size() > PAGE_KEEP && keep > 0 {
                break;
            }
            kept += e.size();
            keep += 1;
        }
        // Requeued messages stay: a tail holds only what comes after every message out with
        // consumers, or a later requeue would overtake what was paged.
        keep = keep.max(self.requeued_to_keep(0, self.ready.iter()));
        if keep >= self.ready.len() {
            return;
        }
        if self.log.is_none() {
            match ctx.store().create_paging_log() {
                Ok(log) => self.log = Some(log),
                Err(e) => {
                    tracing::error!(queue = %ctx.name, error = %e, "cannot create a paging log");
                    return;
                }
            }
        }
        let Some(log) = self.log.clone() else {
            return;
        };
        let start = log.end();
        let mut moved = 0u64;
        let paged = self.ready.split_off(keep);
        for e in &paged {
            let parts = e.message.parts();
            if let Err(err) = log.append_message(e.seq, &parts, false, &e.stamp()) {
                tracing::error!(queue = %ctx.name, error = %err, "cannot page messages out");
                // Keep what could not be written in memory.
                break;
            }
            moved += 1;
        }
        if moved < paged.len() as u64 {
            // The log refused writes part way: every message stays in memory, in order, and
            // what was written is left unread. (Keeping only the unwritten ones put them
            // ahead of the older ones in the tail: consumers got them out of order.)
            self.ready.extend_back(paged);
            return;
        }
        for e in &paged {
            let size = e.size();
            self.ready_bytes = self.ready_bytes.saturating_sub(size);
        }
        self.tail = Some(Tail {
            reader: TailReader {
                pos: start,
                ..TailReader::default()
            },
            count: moved,
        });
        // What was written out is freed now; the allocator keeps it unless asked.
        drop(paged);
        crate::broker::heap::release_soon();
    }

    /// Keeps the in-memory head fed from the tail. Returns whether it added messages.
    ///
    /// While some messages are still in memory, the next batch is read outside the lock
    /// (`ReadAhead`): the file read never holds up publishers and consumers of the queue.
    /// Only when the head is empty, and a consumer or basic.get is waiting on the tail, is it
    /// read here and now.
    pub fn page_in(&mut self, ctx: &QueueCtx) -> bool {
        if self.page_in_levels(ctx) {
            return true;
        }
        if self.deleted || self.ready_bytes >= PAGE_IN_BELOW || self.tail.is_none() {
            return false;
        }
        if self.take_read_ahead(ctx) {
            return true;
        }
        if self.ready.is_empty() {
            return self.page_in_always(ctx);
        }
        if matches!(self.read_ahead, ReadAhead::Idle) {
            self.read_ahead = ReadAhead::Wanted;
        }
        false
    }

    /// Reads a batch of the tail back, however much is in memory.
    pub fn page_in_always(&mut self, ctx: &QueueCtx) -> bool {
        if self.deleted {
            return false;
        }
        if self.take_read_ahead(ctx) {
            return true;
        }
        let (Some(tail), Some(log)) = (self.tail.as_mut(), self.log.clone()) else {
            return false;
        };
        let mut reader = tail.reader.clone();
        let memory = ctx.services.memory;
        match log.read_back(&mut reader, PAGE_IN_BATCH, &|data| {
            charged_buffer(memory, data)
        }) {
            Ok(batch) => self.take_batch(ctx, reader, batch),
            Err(e) => {
                tracing::error!(queue = %ctx.name, error = %e, "cannot read the queue log");
                false
            }
        }
    }

    /// The read to do once the lock is released, if the head asked for one.
    #[inline]
    pub fn start_read_ahead(&mut self) -> Option<ReadJob> {
        if !matches!(self.read_ahead, ReadAhead::Wanted) || self.deleted {
            return None;
        }
        self.begin_read_ahead()
    }

    /// The slow half of [`State::start_read_ahead`], kept out of every queue call's way.
    #[cold]
    fn begin_read_ahead(&mut self) -> Option<ReadJob> {
        let (Some(tail), Some(log)) = (self.tail.as_ref(), self.log.clone()) else {
            self.read_ahead = ReadAhead::Idle;
            return None;
        };
        self.read_ahead = ReadAhead::Reading;
        Some(ReadJob {
            log,
            reader: tail.reader.clone(),
        })
    }

    /// Keeps the batch a read ahead produced (unless the tail moved on meanwhile).
    pub fn finish_read_ahead(&mut self, from: Position, reader: TailReader, batch: Vec<ReadBack>) {
        if matches!(self.read_ahead, ReadAhead::Reading) {
            self.read_ahead = ReadAhead::Ready {
                from,
                reader,
                batch,
            };
        }
    }

    /// A read that failed outside the lock: the next short head tries again.
    pub fn fail_read_ahead(&mut self) {
        if matches!(self.read_ahead, ReadAhead::Reading) {
            self.read_ahead = ReadAhead::Idle;
        }
    }

    /// Takes in a batch read ahead, if it continues where the tail is now.
    fn take_read_ahead(&mut self, ctx: &QueueCtx) -> bool {
        if !matches!(self.read_ahead, ReadAhead::Ready { .. }) {
            return false;
        }
        let ReadAhead::Ready {
            from,
            reader,
            batch,
        } = std::mem::take(&mut self.read_ahead)
        else {
            return false;
        };
        if self.tail.as_ref().is_none_or(|t| t.reader.pos != from) {
            // Read by someone else meanwhile, or purged: stale.
            return false;
        }
        self.take_batch(ctx, reader, batch)
    }

    /// Moves a batch read from the tail into `ready`; `reader` is where it left off.
    fn take_batch(&mut self, ctx: &QueueCtx, reader: TailReader, batch: Vec<ReadBack>) -> bool {
        let Some(tail) = self.tail.as_mut() else {
            return false;
        };
        tail.reader = reader;
        let read = batch.len() as u64;
        let exhausted = read == 0 || read >= tail.count;
        tail.count = tail.count.saturating_sub(read);
        for back in batch {
            if let Some(entry) = self.read_back_or_ack(ctx, back) {
                self.push_or_page(ctx, entry);
            }
        }
        if exhausted {
            self.tail = None;
        }
        self.collect_garbage();
        read > 0
    }
}

impl ReadJob {
    /// Reads the batch (outside the queue's lock). Returns where it started, the reader as
    /// it left off, and what it read.
    pub fn run(
        mut self,
        memory: &'static Memory,
    ) -> std::io::Result<(Position, TailReader, Vec<ReadBack>)> {
        let from = self.reader.pos;
        let batch = self
            .log
            .read_back(&mut self.reader, PAGE_IN_BATCH, &|data| {
                charged_buffer(memory, data)
            })?;
        Ok((from, self.reader, batch))
    }
}

impl State {
    /// [`entry_read_back`]; a message dropped because it cannot be read leaves the queue's
    /// bytes, and is acknowledged in the queue's log if it is durable: left live, it came
    /// back at every start, counted in the queue's depth until its turn came to be read and
    /// dropped again, and it kept its segment on disk.
    pub(super) fn read_back_or_ack(
        &mut self,
        ctx: &QueueCtx,
        back: ReadBack,
    ) -> Option<QueueEntry> {
        let (seq, persisted, bytes) = (back.seq, back.persisted, back.message.body.len() as u64);
        let entry = entry_read_back(ctx, back, Parts::InBuffer);
        if entry.is_none() {
            // Counted in the queue's bytes while it was on disk (`x-max-length-bytes` too).
            self.body_bytes = self.body_bytes.saturating_sub(bytes);
            if persisted {
                self.log_acks(&[seq], bytes);
            }
        }
        entry
    }
}

/// How a message read back holds its bytes, and so what it is charged.
#[derive(Debug, Clone, Copy)]
pub(super) enum Parts {
    /// Slices of a buffer read back many messages at a time, which is charged itself
    /// (`charged_buffer`): the message is charged what it has of its own.
    InBuffer,
    /// Copies of its own (a held dead letter recovered at start): charged whole.
    Own,
}

/// A message read back from a log, as a ready entry charged to the memory gauge; `None`
/// (reported) if its properties no longer scan.
pub(super) fn entry_read_back(ctx: &QueueCtx, m: ReadBack, parts: Parts) -> Option<QueueEntry> {
    let delivery_count = m.message.delivery_count;
    let Some(mut message) = Message::from_stored(m.message) else {
        tracing::error!(queue = %ctx.name, seq = m.seq, "dropping a logged message whose properties do not scan");
        return None;
    };
    match parts {
        // Its CC keys are copies of its own.
        Parts::InBuffer => {
            let own = message.extra_keys_size();
            message.charge_to(ctx.services.memory, own);
        }
        Parts::Own => message.charge_all_to(ctx.services.memory),
    }
    Some(QueueEntry {
        seq: m.seq,
        message: Arc::new(message),
        redelivered: m.redelivered,
        persisted: m.persisted,
        expires_at: m.expires_at,
        delivery_count,
    })
}
