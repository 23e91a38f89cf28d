//! Paging for priority queues: each priority level pages on its own, into a paging log of
//! its own, lowest priorities first, so a priority queue is held to its share of the memory
//! budget like a FIFO queue is.
//!
//! Within a level the FIFO rule holds: every message in a level's tail comes after the
//! level's messages in memory, and new messages of a paged level go to its tail. Across
//! levels, before anything is delivered, the highest level holding any message has its head
//! in memory (read back from its tail if need be), so priority order is kept whatever is on
//! disk. A level is read back only when it is that head and has nothing in memory; the read
//! then happens under the queue's lock (the FIFO read-ahead does not cover levels).
//!
//! A durable priority queue keeps its persistent messages in its own log as always; a
//! level's paging log holds copies, read back with their sequence numbers, so their acks are
//! logged where the durable record is.

use super::context::QueueCtx;
use super::entry::QueueEntry;
use super::state::{LevelTail, PAGE_IN_BATCH, PAGE_KEEP, State, Tail};
use crate::store::TailReader;

/// Bytes of a level kept in memory when it pages out (at least one message).
const LEVEL_KEEP: usize = 64 * 1024;

impl State {
    /// Messages of priority levels that are on disk.
    pub fn level_tail_count(&self) -> u64 {
        self.levels.iter().flatten().map(|t| t.tail.count).sum()
    }

    /// Whether messages of this priority go to their level's tail.
    pub fn level_paged(&self, priority: Option<u8>) -> bool {
        let level = self.ready.level_index(priority);
        self.levels.get(level).is_some_and(Option::is_some)
    }

    /// Pages out priority levels, lowest first, until the queue is back under its share.
    pub fn page_out_levels(&mut self, ctx: &QueueCtx) {
        let count = self.ready.level_count();
        if self.deleted || count < 2 {
            return;
        }
        if self.levels.len() < count {
            self.levels.resize_with(count, || None);
        }
        let paged_before = self.paged_levels;
        for level in 0..count {
            if self.ready_bytes <= PAGE_KEEP {
                break;
            }
            if self.levels[level].is_none() && !self.page_out_level(ctx, level) {
                break;
            }
        }
        if self.paged_levels != paged_before {
            // What was written out is freed; the allocator keeps it unless asked.
            crate::broker::heap::release_soon();
        }
    }

    /// Moves all but the oldest `LEVEL_KEEP` bytes of one level into a new tail. Returns
    /// false if the disk refused.
    fn page_out_level(&mut self, ctx: &QueueCtx, level: usize) -> bool {
        let mut keep = 0usize;
        let mut kept = 0usize;
        for e in self.ready.level(level) {
            if kept + e.size() > LEVEL_KEEP && keep > 0 {
                break;
            }
            kept += e.size();
            keep += 1;
        }
        // As `page_out`: requeued messages stay in memory.
        keep = keep.max(self.requeued_to_keep(level, self.ready.level(level)));
        let paged = self.ready.split_level(level, keep);
        if paged.is_empty() {
            return true;
        }
        let log = match ctx.store().create_paging_log() {
            Ok(log) => log,
            Err(e) => {
                tracing::error!(queue = %ctx.name, error = %e, "cannot create a paging log");
                paged.into_iter().for_each(|e| self.ready.push_back(e));
                return false;
            }
        };
        let start = log.end();
        let mut moved = 0usize;
        for e in &paged {
            let parts = e.message.parts();
            if let Err(err) = log.append_message(e.seq, &parts, false, &e.stamp()) {
                tracing::error!(queue = %ctx.name, error = %err, "cannot page messages out");
                break;
            }
            moved += 1;
        }
        if moved < paged.len() {
            // The log refused writes part way: every message stays in memory, in order, and
            // the level does not page. (Keeping only the unwritten ones in memory put them
            // ahead of the older ones in the log: consumers got them out of order.)
            paged.into_iter().for_each(|e| self.ready.push_back(e));
            log.destroy();
            return false;
        }
        for e in &paged {
            self.ready_bytes = self.ready_bytes.saturating_sub(e.size());
        }
        self.paged_levels += 1;
        self.levels[level] = Some(LevelTail {
            log,
            tail: Tail {
                reader: TailReader {
                    pos: start,
                    ..TailReader::default()
                },
                count: moved as u64,
            },
        });
        true
    }

    /// Puts a message of a paged level after its tail. Returns false if the disk refused.
    pub fn append_to_level(&mut self, ctx: &QueueCtx, entry: &QueueEntry) -> bool {
        let level = self.ready.level_index(entry.message.priority);
        let Some(Some(paged)) = self.levels.get_mut(level) else {
            return false;
        };
        let parts = entry.message.parts();
        match paged
            .log
            .append_message(entry.seq, &parts, false, &entry.stamp())
        {
            Ok(_) => {
                paged.tail.count += 1;
                true
            }
            Err(e) => {
                tracing::error!(queue = %ctx.name, error = %e, "cannot page a message out");
                false
            }
        }
    }

    /// A message read back from the log at recovery, or re-entering `ready`: into memory, or
    /// after its level's tail if that level is paged.
    pub fn push_or_page(&mut self, ctx: &QueueCtx, entry: QueueEntry) {
        if self.paged_levels > 0
            && self.level_paged(entry.message.priority)
            && self.append_to_level(ctx, &entry)
        {
            return;
        }
        self.push_ready(entry);
    }

    /// Reads back the highest level holding messages if all of them are on disk, so that
    /// the head in memory is the head of the queue. Returns whether it read.
    pub fn page_in_levels(&mut self, ctx: &QueueCtx) -> bool {
        if self.paged_levels == 0 {
            return false;
        }
        let Some(top) = self.levels.iter().rposition(Option::is_some) else {
            return false;
        };
        if self.ready.head_level().is_some_and(|head| head >= top) {
            return false;
        }
        let Some(mut paged) = self.levels[top].take() else {
            return false;
        };
        let memory = ctx.services.memory;
        let buffer = |data| crate::broker::memory::charged_buffer(memory, data);
        let batch = match paged
            .log
            .read_back(&mut paged.tail.reader, PAGE_IN_BATCH, &buffer)
        {
            Ok(batch) => batch,
            Err(e) => {
                tracing::error!(queue = %ctx.name, error = %e, "cannot read a paging log");
                self.levels[top] = Some(paged);
                return false;
            }
        };
        let read = batch.len() as u64;
        if read == 0 || read >= paged.tail.count {
            paged.log.destroy();
            self.paged_levels -= 1;
        } else {
            paged.tail.count -= read;
            paged.log.collect_garbage(Some(paged.tail.reader.pos));
            self.levels[top] = Some(paged);
        }
        for back in batch {
            if let Some(entry) = self.read_back_or_ack(ctx, back) {
                self.push_ready(entry);
            }
        }
        read > 0
    }

    /// Drops the levels' tails and their logs, unread: the queue is deleted, or purged and
    /// holds no durable message (`purge`).
    pub fn drop_level_tails(&mut self) {
        for paged in std::mem::take(&mut self.levels).into_iter().flatten() {
            paged.log.destroy();
        }
        self.paged_levels = 0;
    }
}
