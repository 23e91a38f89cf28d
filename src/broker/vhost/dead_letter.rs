//! Routing dead letters, as work rather than recursion.
//!
//! A queue hands its dead letters to its vhost (the [`QueueHost`]) after releasing its lock.
//! The vhost does not route them there and then: it submits a job to the broker's background
//! worker, which routes them from the dead-letter exchange like a publish and enqueues them.
//! If that makes the next queue dead-letter in turn (a chain of queues with TTL 0), that queue
//! submits another job: a chain of any length is a sequence of jobs, never nested calls. A
//! job routes at most [`DEAD_LETTERS_PER_JOB`] letters and puts the rest at the back of the
//! line, so one queue dropping a million messages does not hold up the others' dead letters.

use std::collections::HashSet;
use std::sync::Arc;

use super::VirtualHost;
use crate::broker::exchange::topic::MAX_ROUTE_TOPIC_STATES;
use crate::broker::queue::Queue;
use crate::broker::queue::context::QueueHost;
use crate::broker::queue::dead_letter::{
    DeadLetter, DlxTarget, Reason, Ticket, cycle_queues, make_message,
};
use crate::broker::queue::held::Routed;
use crate::broker::queue::state::Enqueued;
use crate::broker::timer::now_ms;

/// Dead letters one job routes before it yields to other work.
pub const DEAD_LETTERS_PER_JOB: usize = 256;

/// Dead letters waiting to be routed, at most, in the whole broker: past this, new ones are
/// dropped and said in the log, so that queues dead-lettering faster than one thread routes
/// cannot fill memory. Dead-lettering is at most once, as in RabbitMQ (nothing confirms a
/// dead letter).
pub const MAX_DEAD_LETTERS_WAITING: usize = 1_000_000;

/// Copies of one published message that dead-lettering may make beyond one per dead letter
/// (a dead letter routed to n queues makes n - 1 more). Past this, the dead letters of its
/// line are dropped and said in the log. A fanout dead-letter exchange bound back to the K
/// queues that dead-letter into it (with TTL 0, say) multiplies a message at every
/// generation, about e·K! dead letters in all: RabbitMQ's cycle rule stops a letter only at
/// a queue it already died in, and 12 queues made 1.3e9 letters of one publish. A line of
/// dead letters routed to one queue each (a retry loop) never spends any, however long, and
/// one dead letter may go to any number of queues.
pub const MAX_DEAD_LETTER_COPIES_PER_MESSAGE: u64 = 100_000;

impl QueueHost for VirtualHost {
    fn dead_letter(&self, queue: &str, target: DlxTarget, letters: Vec<DeadLetter>) {
        self.submit_dead_letters(queue.to_owned(), target, letters);
    }

    fn queue_expired(&self, name: &str, identity: usize) {
        if let Some(q) = self.queue(name)
            && Arc::as_ptr(&q) as usize == identity
        {
            self.remove_queue(&q);
        }
    }
}

/// Publishes a letter its queue holds until it is routed (at-least-once) to `targets`, and
/// says what became of it: the queues, and the reply consumers (`replied`), that took it,
/// and whether that is everywhere it goes.
fn publish_held(
    ticket: &Ticket,
    targets: &[Arc<Queue>],
    dead: &Arc<crate::broker::message::Message>,
    replied: Vec<String>,
) -> Routed {
    let mut report = Routed {
        id: ticket.id,
        took: Vec::with_capacity(targets.len() + replied.len()),
        // A letter only a reply consumer took went somewhere all the same: held for it, it
        // would be handed to the consumer again at every retry.
        complete: !(targets.is_empty() && ticket.have.is_empty() && replied.is_empty()),
    };
    // Reply names stand among the queue names in `have`: only a queue named exactly as a
    // live reply consumer (`amq.rabbitmq.reply-to.<key>`, which no client may declare)
    // could meet one.
    report
        .took
        .extend(replied.into_iter().map(|name| (name, None)));
    for q in targets {
        match q.publish(dead.clone()) {
            Enqueued::Accepted => report.took.push((q.name.clone(), None)),
            Enqueued::Persisted(epoch) => report.took.push((q.name.clone(), Some(epoch))),
            Enqueued::Rejected | Enqueued::Failed | Enqueued::Deleted => {
                report.complete = false;
            }
        }
    }
    report
}

/// Settles a letter dropped for good, if a queue holds it at least once: no retry could
/// make it go (its properties cannot be decoded, or no longer fit in a frame, or its line
/// spent its copies), and it would stay held, remade at every retry, for ever.
fn settle_dropped(ticket: Option<Ticket>, owner: &mut Option<usize>, reports: &mut Vec<Routed>) {
    if let Some(ticket) = ticket {
        *owner = Some(ticket.owner);
        reports.push(Routed {
            id: ticket.id,
            took: Vec::new(),
            complete: true,
        });
    }
}

/// Drops the queues a dead letter with these headers would close a cycle through.
fn drop_cycles(targets: &mut Vec<Arc<Queue>>, headers: &[u8]) {
    let cycle = cycle_queues(headers);
    if cycle.is_empty() {
        return;
    }
    targets.retain(|q| {
        let cycle = cycle.contains(q.name.as_bytes());
        if cycle {
            tracing::debug!(queue = %q.name, "dead letter dropped: dead-letter cycle");
        }
        !cycle
    });
}

/// Says once per job what it dropped, rather than once per letter.
fn report_dropped(queue: &str, exchange: &str, oversized: usize, refused: usize) {
    if oversized > 0 {
        tracing::warn!(
            queue,
            dropped = oversized,
            "dead letters dropped: their properties no longer fit in a frame"
        );
    }
    if refused > 0 {
        tracing::warn!(
            queue,
            exchange,
            dropped = refused,
            "dead letters dropped: routing them passes more than {MAX_ROUTE_TOPIC_STATES} topic binding states"
        );
    }
}

/// Whether a message's content header frame fits in a frame of `frame_max_bytes` (0: no
/// limit, as AMQP reads it).
fn fits_in_a_frame(message: &crate::broker::message::Message, frame_max_bytes: u32) -> bool {
    // The frame's own bytes, and the header's class, weight and body size.
    const HEADER_FRAME_OVERHEAD: usize = crate::protocol::frame::FRAME_OVERHEAD + 12;
    frame_max_bytes == 0
        || message.properties.len() + HEADER_FRAME_OVERHEAD <= frame_max_bytes as usize
}

impl VirtualHost {
    fn submit_dead_letters(&self, queue: String, target: DlxTarget, letters: Vec<DeadLetter>) {
        if !self
            .services
            .worker
            .reserve(letters.len(), MAX_DEAD_LETTERS_WAITING)
        {
            tracing::warn!(
                queue,
                dropped = letters.len(),
                "dead letters dropped: {MAX_DEAD_LETTERS_WAITING} wait to be routed already"
            );
            return;
        }
        self.enqueue_dead_letters(queue, target, letters);
    }

    /// Queues the routing of `letters`, counted as waiting already.
    fn enqueue_dead_letters(&self, queue: String, target: DlxTarget, letters: Vec<DeadLetter>) {
        let vhost = self.me.clone();
        self.services.worker.submit(Box::new(move || {
            if let Some(vhost) = vhost.upgrade() {
                vhost.route_dead_letters(queue, target, letters);
            }
        }));
    }

    /// Routes dead letters from `queue` to its dead-letter exchange. A missing exchange drops
    /// them silently, as in RabbitMQ; so does a cycle. There is no confirm or return for a
    /// dead letter, except to the queue that holds it (at-least-once, `queue::held`): it is
    /// told which queues took it, and a missing exchange leaves it held.
    fn route_dead_letters(&self, queue: String, target: DlxTarget, mut letters: Vec<DeadLetter>) {
        if letters.len() > DEAD_LETTERS_PER_JOB {
            let rest = letters.split_off(DEAD_LETTERS_PER_JOB);
            self.enqueue_dead_letters(queue.clone(), target.clone(), rest);
        }
        self.services.worker.release(letters.len());
        let Some(exchange) = self.exchange(&target.exchange) else {
            return;
        };
        let now_secs = now_ms() / 1000;
        let mut targets: Vec<Arc<Queue>> = Vec::new();
        let mut reports: Vec<Routed> = Vec::new();
        let mut owner = None;
        // Letters dropped, said once per job below rather than once each.
        let (mut oversized, mut refused) = (0usize, 0usize);
        for letter in letters {
            let Some(dead) =
                make_message(&letter.message, letter.reason, &queue, &target, now_secs)
            else {
                tracing::warn!(
                    queue,
                    "dropping a dead letter whose properties cannot be decoded"
                );
                settle_dropped(letter.ticket, &mut owner, &mut reports);
                continue;
            };
            if !fits_in_a_frame(&dead.message, self.services.frame_max_bytes) {
                // Each death adds an x-death entry holding the message's CC keys: a message
                // carrying 120 KB of them, sent round 2,000 queues, grew to 240 MB, copied at
                // each hop. Past a frame no consumer could be sent it anyway (RabbitMQ makes
                // it, and its consumers' clients fail on the oversized frame).
                oversized += 1;
                settle_dropped(letter.ticket, &mut owner, &mut reports);
                continue;
            }
            targets.clear();
            let key_refs: Vec<&[u8]> = dead.routing_keys.iter().map(|k| k.as_ref()).collect();
            let mut headers = || crate::protocol::raw_table::decode(&dead.headers);
            if self
                .route(&exchange, &key_refs, &mut headers, &mut targets)
                .is_err()
            {
                // Routed nowhere, as a dead letter to a missing exchange is.
                refused += 1;
            }
            if letter.reason != Reason::Rejected {
                drop_cycles(&mut targets, &dead.headers);
            }
            // Same as RabbitMQ, whose default exchange hands a key naming a direct reply-to
            // consumer straight to it, whoever routes the message.
            let mut reply_keys: Vec<&[u8]> = Vec::new();
            if exchange.name.is_empty() {
                let prefix = crate::broker::reply_to::PREFIX.as_bytes();
                reply_keys.extend(key_refs.iter().filter(|k| k.starts_with(prefix)));
            }
            if let Some(ticket) = letter.ticket.as_ref().filter(|t| !t.have.is_empty()) {
                // A set, not a scan per target: a dead-letter exchange may reach many queues.
                // A retry goes only where the letter is not yet: the queues and the reply
                // consumers that took it are both in `have`.
                let have: HashSet<&str> = ticket.have.iter().map(String::as_str).collect();
                targets.retain(|q| !have.contains(q.name.as_str()));
                reply_keys.retain(|k| std::str::from_utf8(k).is_ok_and(|k| !have.contains(k)));
            }
            if !self.spend_copies(&queue, &dead.message, targets.len()) {
                settle_dropped(letter.ticket, &mut owner, &mut reports);
                continue;
            }
            let mut message = dead.message;
            message.charge_all_to(self.services.memory);
            let dead = Arc::new(message);
            let mut replied: Vec<String> = Vec::new();
            if !reply_keys.is_empty() {
                self.services
                    .replies
                    .deliver_named(reply_keys.into_iter(), &dead, |name| {
                        replied.push(String::from_utf8_lossy(name).into_owned());
                    });
            }
            let Some(ticket) = letter.ticket else {
                for q in &targets {
                    q.publish(dead.clone());
                }
                continue;
            };
            owner = Some(ticket.owner);
            reports.push(publish_held(&ticket, &targets, &dead, replied));
        }
        report_dropped(&queue, &exchange.name, oversized, refused);
        if let Some(owner) = owner
            && let Some(source) = self.queue(&queue)
            && Arc::as_ptr(&source) as usize == owner
        {
            source.dead_letters_routed(reports);
        }
    }
}

impl VirtualHost {
    /// Counts the copies a dead letter routed to `targets` queues makes beyond one against
    /// its line's [`MAX_DEAD_LETTER_COPIES_PER_MESSAGE`]; false (and said once in the log)
    /// when the line has spent it, and the letter is dropped.
    fn spend_copies(
        &self,
        queue: &str,
        dead: &crate::broker::message::Message,
        targets: usize,
    ) -> bool {
        let Some(copies) = dead.dead_letter_copies.get() else {
            return true;
        };
        let extra = targets.saturating_sub(1) as u64;
        let before = copies.fetch_add(extra, std::sync::atomic::Ordering::Relaxed);
        if before <= MAX_DEAD_LETTER_COPIES_PER_MESSAGE {
            return true;
        }
        // The line's first refusal marks it, and says so; later ones find it marked.
        const REFUSING: u64 = u64::MAX / 2;
        if copies.fetch_max(REFUSING, std::sync::atomic::Ordering::Relaxed) < REFUSING {
            tracing::warn!(
                queue,
                vhost = %self.name,
                "dead letters of one message dropped: dead-lettering made {MAX_DEAD_LETTER_COPIES_PER_MESSAGE} copies of it already (a dead-letter exchange that routes back to the queues dead-lettering into it?)"
            );
        }
        false
    }
}
