//! The broker: users, virtual hosts with their exchanges and queues, the live connections,
//! and the services they share (store, memory budget, timers, background worker).
//!
//! This layer knows nothing of AMQP connections or channels: queues hand deliveries to a
//! [`queue::delivery::DeliverySink`], direct replies go to a [`reply_to::ReplySink`], and
//! connections are reached through [`connections::ConnectionControl`]. The AMQP layer above
//! implements those traits; so can a management API or a future stream or cluster follower.

pub mod admin;
pub mod alarms;
pub mod arguments;
pub mod body;
pub mod budget;
pub mod connections;
pub mod exchange;
pub mod heap;
pub mod import;
pub mod memory;
pub mod message;
pub mod policy;
pub mod queue;
pub mod recovery;
pub mod reply_to;
pub mod stats;
pub mod timer;
pub mod user_limits;
pub mod users;
pub mod vhost;
pub mod worker;

use std::sync::Arc;

use dashmap::DashMap;

use crate::auth::User;
use crate::auth::access::AccessControl;
use crate::config::Config;
use crate::store::Store;
use crate::store::definitions::{Change, DefinitionsStore, VhostDef, VhostLimits};
use alarms::Alarms;
use connections::Connections;
use memory::Memory;
use reply_to::ReplyConsumers;
use timer::Timers;
use vhost::VirtualHost;
use worker::Worker;

/// Everything connections share.
#[derive(Debug)]
pub struct Broker {
    pub config: Config,
    /// Queue logs and the sync thread.
    pub store: Arc<Store>,
    /// Durable definitions.
    pub definitions: Arc<DefinitionsStore>,
    /// Message bytes held in memory, against the budget.
    pub memory: &'static Memory,
    /// What all consumers hold, against `broker_consumer_bytes`.
    pub consumers: Arc<budget::Budget>,
    users: DashMap<String, Arc<User>>,
    /// Held by each change to users and grants (`Broker::changing_users`).
    user_changes: std::sync::Mutex<()>,
    /// What each user has open, against their `max-connections` and `max-channels`.
    user_usage: DashMap<String, Arc<user_limits::UserUsage>>,
    /// What each user may do in each vhost.
    pub access: AccessControl,
    vhosts: DashMap<String, Arc<VirtualHost>>,
    /// Held by each creation, update and deletion of a vhost (`Broker::changing_vhosts`).
    vhost_changes: std::sync::Mutex<()>,
    /// Live connections, to reach them at shutdown.
    pub connections: Connections,
    /// Direct reply-to consumers, by the key in their reply names.
    pub reply_consumers: Arc<ReplyConsumers>,
    /// The timer thread that expires messages and queues.
    pub timers: Arc<Timers>,
    /// The background thread that routes dead letters.
    pub worker: Arc<Worker>,
    /// The memory and disk alarms.
    pub alarms: Alarms,
    /// Limits on what clients create, shared by every vhost.
    pub creation_limits: vhost::CreationLimits,
    /// Churn since the start and closed channels' counters: the totals that never go
    /// backwards.
    pub ledger: Arc<stats::Ledger>,
    /// When the broker started (milliseconds since the epoch), for uptime.
    pub started_at_ms: u64,
    /// How long the last memory-relief pass took (`relieve_memory`), in milliseconds: the
    /// monitor's questions to a queue come its interval plus this apart.
    pub relief_pass_ms: std::sync::atomic::AtomicU64,
    /// The cluster's name, in every connection's server properties and the management
    /// API: the node's name until one is set (`Broker::set_cluster_name`), kept with the
    /// definitions, as RabbitMQ keeps its `cluster_name` global parameter.
    pub cluster_name: std::sync::RwLock<String>,
    /// The cluster's permanent id (RabbitMQ's `internal_cluster_id` global parameter,
    /// Prometheus's `rabbitmq_cluster_permanent_id`): drawn at random on the first start and
    /// kept with the definitions, so that a dashboard keyed by it follows the cluster through
    /// restarts and a change of name. An import of definitions replaces it, as RabbitMQ's does.
    pub cluster_id: std::sync::RwLock<String>,
}

impl Broker {
    /// Flushes and syncs everything and rewrites the definitions snapshot, so that the next
    /// start has nothing to replay. Called at shutdown.
    pub fn close_store(&self) {
        self.worker.stop();
        if let Err(e) = self.definitions.write_snapshot() {
            tracing::error!(error = %e, "cannot write the definitions snapshot");
        }
        self.store.close();
        self.timers.stop();
        self.alarms.stop();
    }

    pub fn user(&self, name: &str) -> Option<Arc<User>> {
        self.users.get(name).map(|u| u.value().clone())
    }

    /// A new connection's consumer budget, within the broker's.
    pub fn connection_consumer_budget(&self) -> Arc<budget::Budget> {
        budget::Budget::connection(
            self.config.limits.connection_consumer_bytes,
            &self.consumers,
        )
    }

    pub fn vhost(&self, name: &str) -> Option<Arc<VirtualHost>> {
        self.vhosts.get(name).map(|v| v.value().clone())
    }

    pub fn vhosts(&self) -> Vec<Arc<VirtualHost>> {
        self.vhosts.iter().map(|v| v.value().clone()).collect()
    }

    /// Sets a vhost's `max-queues`/`max-connections` (RabbitMQ's `set_vhost_limits`) and
    /// records them with its definition. Limits apply to what is created from now on.
    pub fn set_vhost_limits(&self, name: &str, limits: VhostLimits) -> Option<()> {
        self.update_vhost_limits(name, |l| *l = limits)
    }

    /// Changes some of a vhost's limits: read, changed and recorded under the lock of vhost
    /// changes, so that two changes at once both count.
    pub fn update_vhost_limits(
        &self,
        name: &str,
        change: impl FnOnce(&mut VhostLimits),
    ) -> Option<()> {
        let _changing = self.changing_vhosts();
        let vhost = self.vhost(name)?;
        let mut limits = vhost.limits();
        change(&mut limits);
        vhost.set_limits(limits.clone());
        let mut def = self
            .definitions
            .vhost(name)
            .unwrap_or_else(|| VhostDef::named(name));
        def.limits = limits;
        self.definitions.record(Change::PutVhost(def));
        Some(())
    }

    pub fn connection_count(&self) -> usize {
        self.connections.count()
    }

    /// Copies the messages queues hold out of the read buffers they arrived in, so that
    /// what stays in memory is what the messages are (see `Message::compacted`), and has
    /// each queue page out as a publish to it would (`Queue::relieve`): a queue nobody
    /// publishes to pages too. The memory monitor calls this at each check while the broker
    /// holds more than its memory budget; a queue with nothing to do costs a look under its
    /// lock. Returns how many messages were copied.
    pub fn relieve_memory(&self) -> usize {
        use std::sync::atomic::Ordering;
        let started = std::time::Instant::now();
        let asked_every_ms =
            self.config.limits.monitor_interval_ms + self.relief_pass_ms.load(Ordering::Relaxed);
        let mut compaction = message::Compaction::new(self.memory);
        for vhost in self.vhosts() {
            for queue in vhost.queues() {
                queue.relieve(&mut compaction, asked_every_ms);
            }
        }
        self.relief_pass_ms
            .store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
        if compaction.copied > 0 {
            tracing::debug!(messages = compaction.copied, "copied out of read buffers");
            heap::release_soon();
        }
        compaction.copied
    }

    /// Refuses new connections and asks every connection to close with 320
    /// CONNECTION_FORCED.
    pub fn begin_shutdown(&self) {
        self.connections.shut_down();
    }
}
