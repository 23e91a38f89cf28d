//! Paging: a FIFO queue over its share of the memory budget moves the newest part of its
//! ready messages into a log (its *tail*) and reads them back in order as the head drains.
//! A durable queue pages into its own log; a transient queue gets a paging log when it first
//! needs one. Every message in the tail comes after every message in `ready`.

use std::sync::Arc;

use super::context::QueueCtx;
use super::entry::QueueEntry;
use super::state::{PAGE_IN_BATCH, PAGE_IN_BELOW, PAGE_KEEP, State, Tail};
use crate::broker::message::Message;
use crate::store::TailReader;
use crate::store::record::{FLAG_PERSISTED, FLAG_REDELIVERED};

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
            let flags = if e.persisted { FLAG_PERSISTED } else { 0 }
                | if e.redelivered { FLAG_REDELIVERED } else { 0 };
            let parts = e.message.parts();
            if let Err(err) = log.append_message(e.seq, &parts, false, flags, e.expires_at) {
                tracing::error!(queue = %ctx.name, error = %err, "cannot page messages out");
                // Keep what could not be written in memory.
                break;
            }
            moved += 1;
        }
        let (written, kept_back) = paged.split_at(moved as usize);
        for e in written {
            let size = e.size();
            self.ready_bytes = self.ready_bytes.saturating_sub(size);
        }
        if !kept_back.is_empty() {
            // The log refused writes part way: nothing after a failed write is in the
            // tail, so the unwritten messages stay in memory and paging stops.
            self.ready.extend_back(kept_back.iter().cloned());
            if moved == 0 {
                return;
            }
        }
        self.tail = Some(Tail {
            reader: TailReader {
                pos: start,
                ..TailReader::default()
            },
            count: moved,
        });
    }

    /// Reads the tail back while the in-memory head is short. Returns whether it read
    /// anything.
    pub fn page_in(&mut self, ctx: &QueueCtx) -> bool {
        if self.deleted || self.ready_bytes >= PAGE_IN_BELOW {
            return false;
        }
        self.page_in_always(ctx)
    }

    /// Reads a batch of the tail back, however much is in memory.
    pub fn page_in_always(&mut self, ctx: &QueueCtx) -> bool {
        if self.deleted {
            return false;
        }
        let (Some(tail), Some(log)) = (self.tail.as_mut(), self.log.clone()) else {
            return false;
        };
        let batch = match log.read_back(&mut tail.reader, PAGE_IN_BATCH) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(queue = %ctx.name, error = %e, "cannot read the queue log");
                return false;
            }
        };
        let read = batch.len() as u64;
        let exhausted = read == 0 || read >= tail.count;
        tail.count = tail.count.saturating_sub(read);
        for m in batch {
            let Some(mut message) = Message::from_stored(m.message) else {
                tracing::error!(queue = %ctx.name, seq = m.seq, "dropping a logged message whose properties do not scan");
                continue;
            };
            // Read into a buffer of its own (the record's), so it pins nothing else.
            message.charge_all_to(&ctx.services.memory);
            self.push_ready(QueueEntry {
                seq: m.seq,
                message: Arc::new(message),
                redelivered: m.redelivered,
                persisted: m.persisted,
                expires_at: m.expires_at,
                delivery_count: 0,
            });
        }
        if exhausted {
            self.tail = None;
        }
        self.collect_garbage();
        read > 0
    }
}
