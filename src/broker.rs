//! The broker's shared state: configuration, users, virtual hosts and the live connections,
//! and at start-up the recovery of durable definitions and queues from the data directory.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use dashmap::DashMap;

use crate::auth::{self, User};
use crate::binding::Destination;
use crate::config::Config;
use crate::direct_reply_to::ReplyConsumers;
use crate::exchange::{Exchange, ExchangeKind};
use crate::outbox::{Outbox, OutboxEvent};
use crate::queue::{Queue, QueueConfig};
use crate::store::Store;
use crate::store::definitions::{
    Change, DefinitionsStore, PermissionDef, UserDef, VhostDef, decode_arguments,
};
use crate::timer::Timers;
use crate::vhost::VirtualHost;

/// Everything connections share.
#[derive(Debug)]
pub struct Broker {
    pub config: Config,
    /// Queue logs and the sync thread.
    pub store: Arc<Store>,
    /// Durable definitions.
    pub definitions: Arc<DefinitionsStore>,
    users: DashMap<String, Arc<User>>,
    vhosts: DashMap<String, Arc<VirtualHost>>,
    /// Live connections by id, to reach them at shutdown.
    connections: DashMap<u64, Arc<Outbox>>,
    /// Direct reply-to consumers, by the key in their reply names.
    pub reply_consumers: ReplyConsumers,
    /// The timer thread that expires messages and queues.
    pub timers: Arc<Timers>,
    next_connection_id: AtomicU64,
    /// Set once shutdown began: new connections are refused.
    shutting_down: AtomicBool,
}

/// What start-up found in the data directory.
#[derive(Debug, Default)]
pub struct RecoveryReport {
    pub queues: usize,
    pub messages: u64,
    pub exchanges: usize,
    pub bindings: usize,
    pub torn_logs: usize,
    pub millis: u128,
}

impl Broker {
    /// Opens the data directory and brings back what it holds: users, vhosts, durable
    /// exchanges, queues with their messages, and bindings. On a first start it creates the
    /// configured users and vhosts.
    pub fn open(config: Config) -> std::io::Result<(Arc<Self>, RecoveryReport)> {
        let started = Instant::now();
        std::fs::create_dir_all(&config.data_dir)?;
        let store = Arc::new(Store::open(
            &config.data_dir,
            config.limits.segment_bytes,
            config.limits.memory_budget_bytes,
        )?);
        let (definitions, mut defs, first_boot) =
            DefinitionsStore::open(&config.data_dir, store.shared.clone())?;
        let timers = Timers::start()?;
        if first_boot {
            // As RabbitMQ does, the default users and vhosts are created on the first start
            // only; afterwards the definitions are the truth.
            for u in &config.users {
                let change = Change::PutUser(UserDef {
                    name: u.name.clone(),
                    password_hash: auth::new_password_hash(&u.password),
                    hashing_algorithm: auth::HASHING_ALGORITHM.into(),
                    tags: "administrator".into(),
                    lepus_loopback_only: u.loopback_only,
                });
                defs.apply(change.clone());
                definitions.record(change);
            }
            for v in &config.vhosts {
                for change in [Change::PutVhost(VhostDef { name: v.clone() })]
                    .into_iter()
                    .chain(config.users.iter().map(|u| {
                        Change::PutPermission(PermissionDef {
                            user: u.name.clone(),
                            vhost: v.clone(),
                            configure: ".*".into(),
                            write: ".*".into(),
                            read: ".*".into(),
                        })
                    }))
                {
                    defs.apply(change.clone());
                    definitions.record(change);
                }
            }
        }
        let broker = Broker {
            users: DashMap::new(),
            vhosts: DashMap::new(),
            connections: DashMap::new(),
            reply_consumers: ReplyConsumers::default(),
            next_connection_id: AtomicU64::new(1),
            shutting_down: AtomicBool::new(false),
            timers: timers.clone(),
            store: store.clone(),
            definitions: definitions.clone(),
            config,
        };
        for u in &defs.users {
            broker.users.insert(
                u.name.clone(),
                Arc::new(User::new(&u.name, &u.password_hash, u.lepus_loopback_only)),
            );
        }
        for v in &defs.vhosts {
            let vhost =
                VirtualHost::new(&v.name, store.clone(), definitions.clone(), timers.clone());
            // Policies first, so that recovered queues and exchanges start with them.
            vhost.set_policies(&defs.policies);
            broker.vhosts.insert(v.name.clone(), vhost);
        }
        let mut report = RecoveryReport::default();
        for x in &defs.exchanges {
            let (Some(vhost), Some(kind)) = (broker.vhost(&x.vhost), ExchangeKind::parse(&x.kind))
            else {
                continue;
            };
            vhost.restore_exchange(Exchange::new(
                x.name.clone(),
                kind,
                x.durable,
                x.auto_delete,
                x.internal,
                decode_arguments(&x.arguments, &x.lepus_arguments),
            ));
            report.exchanges += 1;
        }
        let mut known_ids = Vec::new();
        for q in &defs.queues {
            let Some(vhost) = broker.vhost(&q.vhost) else {
                continue;
            };
            let (log, recovered) = store.recover_queue_log(q.lepus_id)?;
            if recovered.torn {
                report.torn_logs += 1;
                tracing::warn!(queue = %q.name, vhost = %q.vhost, "cut a torn write at the end of the queue's log");
            }
            report.queues += 1;
            report.messages += recovered.count;
            known_ids.push(q.lepus_id);
            let policy = vhost.queue_policy(&q.name);
            vhost.restore_queue(Queue::recovered(
                QueueConfig {
                    name: q.name.clone(),
                    vhost: q.vhost.clone(),
                    durable: true,
                    auto_delete: q.auto_delete,
                    exclusive_owner: None,
                    arguments: decode_arguments(&q.arguments, &q.lepus_arguments),
                    id: q.lepus_id,
                },
                vhost.queue_context(),
                log,
                recovered,
                policy.as_ref(),
            ));
        }
        for b in &defs.bindings {
            let Some(vhost) = broker.vhost(&b.vhost) else {
                continue;
            };
            let destination = if b.destination_type == "exchange" {
                vhost.exchange(&b.destination).map(Destination::Exchange)
            } else {
                vhost.queue(&b.destination).map(Destination::Queue)
            };
            if let Some(d) = destination {
                vhost.restore_binding(
                    &b.source,
                    d,
                    &b.routing_key,
                    decode_arguments(&b.arguments, &b.lepus_arguments),
                );
                report.bindings += 1;
            }
        }
        // Logs of queues deleted while the broker was down.
        for id in store.queue_ids_on_disk() {
            if !known_ids.contains(&id) {
                let _ = std::fs::remove_dir_all(store.queue_dir(id));
            }
        }
        report.millis = started.elapsed().as_millis();
        Ok((Arc::new(broker), report))
    }

    /// Flushes and syncs everything and rewrites the definitions snapshot, so that the next
    /// start has nothing to replay. Called at shutdown.
    pub fn close_store(&self) {
        if let Err(e) = self.definitions.write_snapshot() {
            tracing::error!(error = %e, "cannot write the definitions snapshot");
        }
        self.store.close();
        self.timers.stop();
    }

    pub fn user(&self, name: &str) -> Option<Arc<User>> {
        self.users.get(name).map(|u| u.value().clone())
    }

    pub fn vhost(&self, name: &str) -> Option<Arc<VirtualHost>> {
        self.vhosts.get(name).map(|v| v.value().clone())
    }

    pub fn vhosts(&self) -> Vec<Arc<VirtualHost>> {
        self.vhosts.iter().map(|v| v.value().clone()).collect()
    }

    /// Registers a new connection, unless the broker is full or shutting down.
    pub fn register_connection(&self) -> Option<Arc<Outbox>> {
        if self.shutting_down.load(Ordering::Acquire)
            || self.connections.len() >= self.config.limits.max_connections
        {
            return None;
        }
        let id = self.next_connection_id.fetch_add(1, Ordering::Relaxed);
        let outbox = Arc::new(Outbox::new(id, self.config.limits.connection_outbox_bytes));
        self.connections.insert(id, outbox.clone());
        Some(outbox)
    }

    pub fn unregister_connection(&self, id: u64) {
        self.connections.remove(&id);
    }

    pub fn connection_count(&self) -> usize {
        self.connections.len()
    }

    /// Asks every connection to close with 320 CONNECTION_FORCED.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Release);
        for c in self.connections.iter() {
            c.value().push_event(OutboxEvent::Close {
                code: 320,
                text: "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'"
                    .into(),
            });
        }
    }
}
