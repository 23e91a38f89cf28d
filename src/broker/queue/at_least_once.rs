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
//! a retry goes only to the queues that do not have it yet. Turning at-least-once off (by a
//! policy, or `drop-head`) drops the held letters, as RabbitMQ does.
//!
//! A crash before the Ack brings a letter back as a ready message of this queue: nothing
//! is lost, and a target may get it twice (at least once).

use super::context::QueueCtx;
use super::dead_letter::{DeadLetter, Reason, Ticket};
use super::entry::QueueEntry;
use super::held::{HeldLetter, Routed};
use super::state::{State, without_delivery_count};
use crate::broker::timer::now_ms;
use crate::store::sync::Outcome;

impl State {
    /// Holds a dead letter (see the module's doc) and hands it over for routing.
    pub fn hold(&mut self, entry: QueueEntry, reason: Reason) {
        let id = self.held.next_id;
        self.held.next_id += 1;
        self.held.count += 1;
        self.held.bytes += entry.message.body.len() as u64;
        let letter = HeldLetter {
            entry,
            reason,
            have: Vec::new(),
            have_epoch: None,
            due_ms: 0,
            syncing: None,
        };
        self.held.letters.insert(id, letter);
        self.send_held(id, now_ms());
    }

    /// Sends the letter `id` again. The queues that took it in an epoch that failed do not
    /// have it after all.
    fn resend_held(&mut self, ctx: &QueueCtx, id: u64, now: u64) {
        if let Some(letter) = self.held.letters.get_mut(&id)
            && letter
                .have_epoch
                .is_some_and(|e| ctx.store().shared.outcome(e) == Outcome::Failed)
        {
            letter.have.clear();
            letter.have_epoch = None;
        }
        self.send_held(id, now);
    }

    /// Hands the letter `id` to the host, to the queues that do not have it yet.
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
                have: letter.have.clone(),
            }),
        });
    }

    /// The host routed held letters: settles those every queue has.
    pub fn held_routed(&mut self, ctx: &QueueCtx, reports: Vec<Routed>) {
        if self.deleted {
            // Its letters went with it (as in RabbitMQ), and its log is gone.
            return;
        }
        for report in reports {
            let Some(letter) = self.held.letters.get_mut(&report.id) else {
                continue;
            };
            letter.have.extend(report.took);
            letter.have_epoch = letter.have_epoch.max(report.epoch);
            if !report.complete || letter.syncing.is_some() {
                // Routed again when due; or settling already (a retry sent meanwhile).
                continue;
            }
            match report.epoch {
                None => self.settle_held(report.id),
                Some(epoch) => {
                    letter.syncing = Some(epoch);
                    self.held.due.remove(&(letter.due_ms, report.id));
                    self.held.syncing.insert((epoch, report.id));
                }
            }
        }
        self.settle_synced(ctx);
    }

    /// Settles the letters whose epoch is on disk; a letter whose epoch failed is routed
    /// again to every queue.
    fn settle_synced(&mut self, ctx: &QueueCtx) {
        while let Some(&(epoch, id)) = self.held.syncing.first() {
            match ctx.store().shared.outcome(epoch) {
                Outcome::Pending => break,
                Outcome::Durable => self.settle_held(id),
                Outcome::Failed => {
                    if let Some(letter) = self.held.letters.get_mut(&id) {
                        letter.syncing = None;
                        letter.have.clear();
                        letter.have_epoch = None;
                    }
                    self.send_held(id, now_ms());
                }
            }
            self.held.syncing.remove(&(epoch, id));
        }
    }

    /// Every queue has the letter `id`: it leaves for good.
    fn settle_held(&mut self, id: u64) {
        let Some(letter) = self.held.letters.remove(&id) else {
            return;
        };
        self.held.due.remove(&(letter.due_ms, id));
        self.forget_held(&letter.entry);
        if letter.entry.persisted {
            self.log_ack(&letter.entry);
        }
    }

    fn forget_held(&mut self, entry: &QueueEntry) {
        self.held.count -= 1;
        self.held.bytes = self
            .held
            .bytes
            .saturating_sub(entry.message.body.len() as u64);
    }

    /// The timer went off: settles what is on disk and routes again what is due.
    pub fn held_tick(&mut self, ctx: &QueueCtx, now: u64) {
        if self.held.is_empty() {
            return;
        }
        self.settle_synced(ctx);
        while let Some(&(at, id)) = self.held.due.first() {
            if at > now {
                break;
            }
            self.resend_held(ctx, id, now);
        }
    }

    /// The settings changed: with at-least-once still on, every held letter not settling is
    /// routed again now (as RabbitMQ does on a policy change); with it off, they are
    /// dropped.
    pub fn held_settings_changed(&mut self, ctx: &QueueCtx) {
        if self.held.is_empty() {
            return;
        }
        if self.settings.dead_letter_at_least_once {
            let now = now_ms();
            let ids: Vec<u64> = self
                .held
                .letters
                .iter()
                .filter(|(_, l)| l.syncing.is_none())
                .map(|(&id, _)| id)
                .collect();
            for id in ids {
                self.resend_held(ctx, id, now);
            }
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
            self.forget_held(&letter.entry);
            if letter.entry.persisted {
                self.log_ack(&letter.entry);
            }
        }
    }
}
