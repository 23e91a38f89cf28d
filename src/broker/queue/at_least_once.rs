//! At-least-once dead-lettering: a quorum queue with `x-dead-letter-strategy: at-least-once`,
//! `reject-publish` and a dead-letter exchange keeps each dead letter until every queue it
//! is routed to has it, as RabbitMQ 3.10 does (`rabbit_fifo_dlx`).
//!
//! A held letter keeps its durable record (no Ack is logged) and its place in the queue's
//! counts: `messages`, `messages_dlx`, and the length limits, so a queue whose dead letters
//! cannot leave ends up refusing publishes. It is handed to the host for routing at once.
//! The host reports which queues took it ([`Routed`]); a letter is settled (its Ack logged)
//! when every queue it was routed to has it, durably if they logged it. A letter whose
//! exchange is missing, that matched no queue, or that a queue refused is routed again
//! after `dead_letter_retry_ms` (RabbitMQ: 3 minutes), or at once when a policy changes;
//! a retry goes only to the queues that do not have it yet. A letter no retry could send (its
//! properties no longer fit in a frame, or its line spent its dead-letter copies) is settled
//! as dropped. Turning at-least-once off (by a policy, or `drop-head`) drops the held
//! letters, as RabbitMQ does.
//!
//! A durable letter is marked held in the queue's log (`store::record::Kind::Held`): a
//! restart, clean or not, brings it back held, and routes it again to every queue, as
//! RabbitMQ's new dead-letter worker does after a restart; a target may get it twice (at
//! least once). Should at-least-once be off by then, the letters are dropped, as when it is
//! turned off.

use std::collections::HashSet;

use super::context::QueueCtx;
use super::dead_letter::{DeadLetter, Reason, Ticket};
use super::entry::QueueEntry;
use super::held::{HELD_SENDS_PER_TICK, Held, HeldLetter, Routed};
use super::state::{State, without_delivery_count};
use crate::broker::timer::now_ms;
use crate::store::sync::Outcome;

impl State {
    /// Holds a dead letter (see the module's doc) and hands it over for routing. A durable
    /// one is marked held in the log, so that a restart brings it back held.
    pub fn hold(&mut self, entry: QueueEntry, reason: Reason) {
        if entry.persisted
            && let Some(log) = &self.log
            && let Err(e) = log.held(entry.seq, reason.code())
        {
            // It comes back as a ready message after a restart: nothing is lost.
            tracing::error!(error = %e, "cannot log a held dead letter");
        }
        let id = self.keep_held(entry, reason);
        self.send_held(id, now_ms());
    }

    /// Holds a dead letter brought back by a restart. It is routed again once everything
    /// is restored (`Queue::route_held_again`).
    pub fn hold_recovered(&mut self, entry: QueueEntry, reason: Reason) {
        let id = self.keep_held(entry, reason);
        let Some(letter) = self.held.letters.get_mut(&id) else {
            return;
        };
        letter.due_ms = now_ms().saturating_add(self.held.retry_ms.max(1));
        self.held.due.insert((letter.due_ms, id));
    }

    /// Keeps a letter among the held ones, counted; returns its id.
    fn keep_held(&mut self, entry: QueueEntry, reason: Reason) -> u64 {
        let id = Held::next_id();
        self.held.count += 1;
        self.held.bytes += entry.message.body.len() as u64;
        let letter = HeldLetter {
            entry,
            reason,
            have: Vec::new(),
            due_ms: 0,
            syncing: None,
        };
        self.held.letters.insert(id, letter);
        id
    }

    /// Hands the letter `id` to the host, for the queues that do not have it yet, and sets
    /// when it is due again.
    fn send_held(&mut self, id: u64, now: u64) {
        let Some(letter) = self.held.letters.get_mut(&id) else {
            return;
        };
        self.held.due.remove(&(letter.due_ms, id));
        // At least a millisecond on, so that a tick never sends the same letter twice.
        letter.due_ms = now.saturating_add(self.held.retry_ms.max(1));
        self.held.due.insert((letter.due_ms, id));
        self.dead.push(DeadLetter {
            message: without_delivery_count(&letter.entry.message),
            reason: letter.reason,
            ticket: Some(Ticket {
                id,
                owner: self.held.owner,
                have: letter.have.iter().map(|(name, _)| name.clone()).collect(),
            }),
        });
    }

    /// The host routed held letters: a letter every queue has is settled, once the epochs
    /// they logged it in are on disk.
    pub fn held_routed(&mut self, ctx: &QueueCtx, reports: Vec<Routed>) {
        if self.deleted {
            // Its letters went with it (as in RabbitMQ), and its log is gone.
            return;
        }
        let before = self.held.count;
        for report in reports {
            let Some(letter) = self.held.letters.get_mut(&report.id) else {
                continue;
            };
            if letter.have.is_empty() {
                letter.have = report.took;
            } else {
                // A set, not a scan per queue: a dead-letter exchange may reach many queues.
                let had: HashSet<String> = letter.have.iter().map(|(n, _)| n.clone()).collect();
                let new = report.took.into_iter().filter(|(n, _)| !had.contains(n));
                letter.have.extend(new);
            }
            if !report.complete || letter.syncing.is_some() {
                // Routed again when due; or settling already (a copy sent meanwhile).
                continue;
            }
            // Epochs are synced in order: the latest one covers the others.
            match letter.have.iter().filter_map(|(_, e)| *e).max() {
                None => self.settle_held(report.id),
                Some(epoch) => {
                    letter.syncing = Some(epoch);
                    self.held.due.remove(&(letter.due_ms, report.id));
                    self.held.syncing.insert((epoch, report.id));
                }
            }
        }
        self.settle_synced(ctx);
        if self.held.count < before {
            self.collect_garbage();
        }
    }

    /// Settles the letters whose epochs are on disk. A letter a queue took in an epoch
    /// that failed is routed again, to the queues whose epoch failed.
    fn settle_synced(&mut self, ctx: &QueueCtx) {
        while let Some(&(epoch, id)) = self.held.syncing.first() {
            if ctx.store().shared.outcome(epoch) == Outcome::Pending {
                break;
            }
            self.held.syncing.remove(&(epoch, id));
            let Some(letter) = self.held.letters.get_mut(&id) else {
                continue;
            };
            letter.syncing = None;
            if forget_failed(ctx, &mut letter.have) {
                self.send_held(id, now_ms());
            } else {
                self.settle_held(id);
            }
        }
    }

    /// Every queue has the letter `id`: it leaves for good.
    fn settle_held(&mut self, id: u64) {
        let Some(letter) = self.held.letters.remove(&id) else {
            return;
        };
        self.held.due.remove(&(letter.due_ms, id));
        self.drop_held(letter);
    }

    /// Counts a letter out and logs its Ack. Its callers then let the log delete what no
    /// letter needs any more (`collect_garbage`): after a restart that brought back only held
    /// letters, nothing else would.
    fn drop_held(&mut self, letter: HeldLetter) {
        self.held.count -= 1;
        self.held.bytes = self
            .held
            .bytes
            .saturating_sub(letter.entry.message.body.len() as u64);
        if letter.entry.persisted {
            self.log_ack(&letter.entry);
        }
    }

    /// The timer went off: settles what is on disk and routes again what is due, a batch
    /// at a time.
    pub fn held_tick(&mut self, ctx: &QueueCtx, now: u64) {
        if self.held.is_empty() {
            return;
        }
        let before = self.held.count;
        self.settle_synced(ctx);
        if self.held.count < before {
            self.collect_garbage();
        }
        for _ in 0..HELD_SENDS_PER_TICK {
            let Some(&(at, id)) = self.held.due.first() else {
                break;
            };
            if at > now {
                break;
            }
            self.held.due.pop_first();
            if let Some(letter) = self.held.letters.get_mut(&id) {
                forget_failed(ctx, &mut letter.have);
                self.send_held(id, now);
            }
        }
    }

    /// The settings changed: with at-least-once still on, every held letter not settling is
    /// due now (RabbitMQ routes them again on a policy change); with it off, they are
    /// dropped, as in RabbitMQ.
    pub fn held_settings_changed(&mut self, ctx: &QueueCtx) {
        if self.held.is_empty() {
            return;
        }
        if self.settings.dead_letter_at_least_once {
            let now = now_ms();
            let held = &mut self.held;
            for (&id, letter) in held.letters.iter_mut() {
                if letter.syncing.is_none() && held.due.remove(&(letter.due_ms, id)) {
                    letter.due_ms = now;
                    held.due.insert((now, id));
                }
            }
            self.held_tick(ctx, now);
            return;
        }
        let letters = std::mem::take(&mut self.held.letters);
        self.held.due.clear();
        self.held.syncing.clear();
        tracing::info!(
            queue = %ctx.name,
            dropped = letters.len(),
            "at-least-once dead-lettering turned off: the dead letters held are deleted"
        );
        for letter in letters.into_values() {
            self.drop_held(letter);
        }
        self.collect_garbage();
    }

    /// The queue is deleted: its held letters go with it (its log is destroyed).
    pub fn clear_held(&mut self) {
        self.held = Held::new(self.held.retry_ms(), self.held.owner());
    }
}

/// Forgets the queues that took a letter in an epoch that failed; true if there were any.
fn forget_failed(ctx: &QueueCtx, have: &mut Vec<(String, Option<u64>)>) -> bool {
    let before = have.len();
    have.retain(|(_, epoch)| {
        epoch.is_none_or(|e| ctx.store().shared.outcome(e) != Outcome::Failed)
    });
    have.len() != before
}
