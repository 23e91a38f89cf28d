//! Queues of a vhost: declare, delete, and the deletions that follow from connections closing.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use amq_protocol::types::FieldTable;

use super::checks::{self, AuthorizeNew};
use super::unbinding::Pending;
use super::{SyncEpoch, VirtualHost};
use crate::amqp_error;
use crate::broker::arguments::{self, queue_desc};
use crate::broker::exchange::Destination;
use crate::broker::queue::settings::QueueType;
use crate::broker::queue::{Queue, QueueConfig};
use crate::protocol::error::{AmqpError, AmqpResult, ReplyCode};
use crate::protocol::table;
use crate::store::definitions::Change;

/// What queue.declare asks for (with the name already chosen).
#[derive(Debug, Clone)]
pub struct QueueDeclare {
    pub name: String,
    pub passive: bool,
    pub durable: bool,
    pub exclusive: bool,
    pub auto_delete: bool,
    pub arguments: FieldTable,
    /// The client wants no Declare-Ok: in RabbitMQ such a redeclare does not count as use
    /// of a classic queue for `x-expires`.
    pub nowait: bool,
}

/// RabbitMQ's quorum queues are durable, shared and permanent: a declare of one that is not
/// is refused.
fn check_quorum_properties(d: &QueueDeclare, desc: &str) -> AmqpResult<()> {
    if table::get(&d.arguments, "x-queue-type").and_then(table::as_bytes)
        != Some(b"quorum".as_slice())
    {
        return Ok(());
    }
    for (refused, property) in [
        (d.auto_delete, "auto-delete"),
        (d.exclusive, "exclusive-owner"),
        (!d.durable, "non-durable"),
    ] {
        if refused {
            return Err(amqp_error!(
                PreconditionFailed,
                "invalid property '{}' for {}",
                property,
                desc
            ));
        }
    }
    Ok(())
}

impl VirtualHost {
    /// Finds a queue the connection may use: it exists and is not another connection's
    /// exclusive queue.
    pub fn usable_queue(&self, name: &str, connection: u64) -> AmqpResult<Arc<Queue>> {
        let q = self.queue(name).ok_or_else(|| self.no_queue(name))?;
        if q.exclusive_owner.is_some_and(|owner| owner != connection) {
            return Err(self.resource_locked(name));
        }
        Ok(q)
    }

    /// queue.declare. Returns the queue with its ready-message and consumer counts. The
    /// channel has already refused client-chosen names in the reserved `amq.` namespace;
    /// `authorize_new` makes the checks a new queue needs.
    pub fn declare_queue(
        &self,
        d: &QueueDeclare,
        connection: u64,
        authorize_new: AuthorizeNew<'_>,
    ) -> AmqpResult<(Arc<Queue>, u32, u32, SyncEpoch)> {
        let desc = queue_desc(&d.name, &self.name);
        super::name_fits_amqp("queue", &d.name)?;
        crate::broker::stats::bump(&self.services.ledger.churn.queues_declared, 1);
        let mut topology = self.lock();
        self.refuse_if_retired(&topology)?;
        if let Some(q) = self.queue(&d.name) {
            let owned_by_other = q.exclusive_owner.is_some_and(|o| o != connection);
            if owned_by_other || (!d.passive && d.exclusive != q.exclusive_owner.is_some()) {
                return Err(self.resource_locked(&d.name));
            }
            if !d.passive {
                // Exclusive queues are never durable; RabbitMQ accepts either on redeclare.
                if d.durable != q.durable && q.exclusive_owner.is_none() {
                    return Err(arguments::inequivalent_flag(
                        "durable", &desc, d.durable, q.durable,
                    ));
                }
                if d.auto_delete != q.auto_delete {
                    return Err(arguments::inequivalent_flag(
                        "auto_delete",
                        &desc,
                        d.auto_delete,
                        q.auto_delete,
                    ));
                }
                arguments::assert_queue_equivalence(&q.arguments, &d.arguments, &desc)?;
            }
            q.touch_on_declare(d.passive, d.nowait);
            let (messages, consumers) = q.counts();
            return Ok((q, messages, consumers, None));
        }
        if d.passive {
            return Err(self.no_queue(&d.name));
        }
        // Same as RabbitMQ (`rabbit_channel`): the limit, then the dead-letter exchange's
        // permissions, then the arguments.
        self.check_queue_limits(&d.name)?;
        authorize_new(checks::new_queue_checks(&d.name, &d.arguments))?;
        arguments::validate_queue_arguments(&d.arguments, &desc)?;
        arguments::check_kept_size(&d.arguments, || desc.clone())?;
        check_quorum_properties(d, &desc)?;
        // Like RabbitMQ, an exclusive queue is never durable.
        let durable = d.durable && !d.exclusive;
        let share = self.topology_share(
            QueueConfig::kept_bytes(&d.name, durable, &d.arguments),
            || format!("cannot declare queue '{}'", d.name),
        )?;
        let (id, log) = if durable {
            let id = self.services.defs.next_queue_id();
            let log = self.services.store.create_queue_log(id).map_err(|e| {
                tracing::error!(queue = %d.name, error = %e, "cannot create the queue's log");
                AmqpError::bare(ReplyCode::InternalError)
            })?;
            (id, Some(log))
        } else {
            (0, None)
        };
        let policy_epoch = self.policy_epoch();
        let policy = self.queue_policy(&d.name);
        let queue = Queue::new(
            QueueConfig {
                name: d.name.clone(),
                vhost: self.name.clone(),
                durable,
                auto_delete: d.auto_delete,
                exclusive_owner: d.exclusive.then_some(connection),
                arguments: d.arguments.clone(),
                id,
                share: Some(share),
            },
            self.queue_services(),
            log,
            policy.as_ref(),
        );
        if durable {
            let def = self.queue_def(&queue);
            self.record(&mut topology, Change::PutQueue(def));
        }
        self.queues.insert(d.name.clone(), queue.clone());
        if let Some(owner) = queue.exclusive_owner {
            let owned = topology.exclusive.entry(owner).or_default();
            owned.insert(d.name.clone());
        }
        self.catch_up_with_policies(&queue, policy_epoch);
        self.services.limits.queues.fetch_add(1, Ordering::Relaxed);
        crate::broker::stats::bump(&self.services.ledger.churn.queues_created, 1);
        self.changed();
        Ok((queue, 0, 0, topology.sync.take()))
    }

    /// The vhost's `max-queues` and the broker's queue limit, with RabbitMQ's texts.
    fn check_queue_limits(&self, name: &str) -> AmqpResult<()> {
        if let Some(max) = self.limits().max_queues.filter(|&m| m >= 0)
            && self.queues.len() as i64 >= max
        {
            return Err(amqp_error!(
                PreconditionFailed,
                "cannot declare queue '{}': queue limit in vhost '{}' ({}) is reached",
                name,
                self.name,
                max
            ));
        }
        let limits = &self.services.limits;
        if limits.queues.load(Ordering::Relaxed) >= limits.max_queues {
            return Err(amqp_error!(
                PreconditionFailed,
                "cannot declare queue '{}': queue limit in cluster ({}) is reached",
                name,
                limits.max_queues
            ));
        }
        Ok(())
    }

    /// Puts back a durable queue recovered at start-up.
    pub fn restore_queue(&self, q: Arc<Queue>) {
        self.services.limits.queues.fetch_add(1, Ordering::Relaxed);
        self.queues.insert(q.name.clone(), q);
        self.changed();
    }

    /// queue.delete. Deleting a missing queue succeeds with a count of 0, as in RabbitMQ.
    pub fn delete_queue(
        &self,
        name: &str,
        if_unused: bool,
        if_empty: bool,
        connection: u64,
    ) -> AmqpResult<(u32, SyncEpoch)> {
        let q = match self.usable_queue(name, connection) {
            Ok(q) => q,
            Err(e) if e.code == ReplyCode::NotFound => return Ok((0, None)),
            Err(e) => return Err(e),
        };
        let desc = queue_desc(name, &self.name);
        if let Some(reason) = conditional_delete_refused(&q, &desc, if_unused, if_empty) {
            // A connection error, as in RabbitMQ.
            return Err(amqp_error!(NotImplemented, "{}", reason));
        }
        let (messages, consumers) = q.counts();
        // Same as RabbitMQ: emptiness is checked first.
        if if_empty && messages > 0 {
            return Err(amqp_error!(PreconditionFailed, "{} not empty", desc));
        }
        if if_unused && consumers > 0 {
            return Err(amqp_error!(PreconditionFailed, "{} in use", desc));
        }
        Ok(self.remove_queue(&q))
    }

    /// Deletes a queue unconditionally (auto-delete, exclusive owner gone, queue.delete):
    /// removes its bindings and its log and tells its consumers. Returns the ready messages
    /// it held and the epoch its deletion is durable in.
    pub fn remove_queue(&self, queue: &Arc<Queue>) -> (u32, SyncEpoch) {
        let mut topology = self.lock();
        let removed = self
            .queues
            .remove_if(&queue.name, |_, v| Arc::ptr_eq(v, queue))
            .is_some();
        if !removed {
            return (0, None);
        }
        if let Some(owner) = queue.exclusive_owner
            && let Some(owned) = topology.exclusive.get_mut(&owner)
        {
            owned.remove(&queue.name);
            if owned.is_empty() {
                topology.exclusive.remove(&owner);
            }
        }
        self.services.limits.queues.fetch_sub(1, Ordering::Relaxed);
        crate::broker::stats::bump(&self.services.ledger.churn.queues_deleted, 1);
        if queue.durable {
            // Also forgets the bindings to it in the definitions.
            self.record(
                &mut topology,
                Change::DeleteQueue {
                    vhost: self.name.clone(),
                    name: queue.name.clone(),
                },
            );
        }
        queue.detach();
        let destination = Destination::Queue(queue.clone());
        let incoming = Self::take_incoming(&mut topology, &destination);
        self.changed();
        let mut sync = topology.sync.take();
        drop(topology);
        // Its bindings a batch at a time, the lock let go between batches.
        let sources = self.unbind_incoming(&destination, incoming);
        sync = sync.max(self.settle_unbinding(sources.list, Pending::new()));
        let (messages, mut consumers) = queue.mark_deleted();
        // RabbitMQ cancels a deleted queue's consumers in consumer-tag order.
        consumers.sort_by(|a, b| a.tag.cmp(&b.tag));
        for c in consumers {
            c.sink.consumer_cancelled(c.channel, c.id, c.tag.clone());
        }
        (messages, sync)
    }

    /// Deletes the exclusive queues of a connection that closed.
    pub fn remove_exclusive_queues(&self, connection: u64) {
        let names = self
            .lock()
            .exclusive
            .remove(&connection)
            .unwrap_or_default();
        for name in names {
            if let Some(q) = self.queue(&name)
                && q.exclusive_owner == Some(connection)
            {
                self.remove_queue(&q);
            }
        }
    }
}

/// Why a conditional delete (`if-unused`, `if-empty`) of `queue` is refused whatever it
/// holds, if it is: same as RabbitMQ 3.10, quorum queues take neither flag.
pub fn conditional_delete_refused(
    queue: &Queue,
    desc: &str,
    if_unused: bool,
    if_empty: bool,
) -> Option<String> {
    if queue.settings().queue_type != QueueType::Quorum || !(if_unused || if_empty) {
        return None;
    }
    let flag = if if_unused { "if-unused" } else { "if-empty" };
    Some(format!(
        "cannot delete {desc}. queue.delete operations with {flag} flag set are not supported by quorum queues"
    ))
}
