//! Start-up: opening the data directory and bringing back what it holds (users, vhosts,
//! durable exchanges, queues with their messages, bindings), or on the first start creating
//! the configured users and vhosts.

use std::sync::Arc;
use std::time::Instant;

use dashmap::DashMap;

use super::Broker;
use super::admin::{CLUSTER_NAME, INTERNAL_CLUSTER_ID, new_cluster_id};
use super::alarms::Alarms;
use super::budget::Budget;
use super::connections::{
    Connections, DescriptorShare, STORE_FILES_RESERVED, STORE_FILES_UNLIMITED,
};
use super::exchange::{Destination, Exchange, ExchangeKind};
use super::memory::Memory;
use super::queue::{Queue, QueueConfig};
use super::timer::Timers;
use super::vhost::{CreationLimits, VhostServices, VirtualHost};
use super::worker::Worker;
use crate::auth::access::{AccessControl, VhostPermissions};
use crate::auth::{self, User};
use crate::config::Config;
use crate::store::Store;
use crate::store::definitions::{
    Change, Definitions, DefinitionsStore, GlobalParameterDef, PermissionDef, UserDef, VhostDef,
    decode_arguments,
};
use crate::store::file_cache::CachedFs;
use crate::store::fs::{Fs, RealFs};

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
        Self::open_on(Arc::new(RealFs), config)
    }

    /// [`Broker::open`] on a file system of the caller's choosing (tests simulate faults).
    pub fn open_on(
        fs: Arc<dyn Fs>,
        config: Config,
    ) -> std::io::Result<(Arc<Self>, RecoveryReport)> {
        let started = Instant::now();
        // First: a limit too low to serve anyone refuses the start before anything is
        // written, and the store opens its files under the raised limit.
        let descriptors = share_descriptors(config.limits.max_connections)?;
        let store_files = (config.limits.max_open_store_files).unwrap_or(descriptors.store_files);
        let fs: Arc<dyn Fs> = Arc::new(CachedFs::new(fs, store_files));
        fs.create_dir_all(&config.data_dir)?;
        let store = Arc::new(Store::open_on(
            fs,
            &config.data_dir,
            config.limits.segment_bytes,
        )?);
        let (definitions, mut defs, first_boot) = DefinitionsStore::open(
            &config.data_dir,
            store.shared.clone(),
            config.skip_damaged_definitions,
        )?;
        // Same as RabbitMQ (`maybe_insert_default_data`): with definitions to load, the
        // default user and vhost are not created; the definitions say who may log in, and
        // an operator's file must not come with a guest administrator beside it.
        if first_boot && config.load_definitions.is_none() {
            create_defaults(&config, &definitions, &mut defs);
        } else if first_boot {
            tracing::info!(
                "will not create the default vhost and user: there are definitions to load"
            );
        }
        let memory = Memory::leaked(config.limits.memory_budget_bytes);
        let global = |name: &str| {
            defs.global_parameters
                .iter()
                .find(|p| p.name == name)
                .and_then(|p| p.value.as_str())
                .map(str::to_owned)
        };
        let cluster_name = global(CLUSTER_NAME).unwrap_or_else(|| config.node_name.clone());
        // Same as RabbitMQ: the permanent id is drawn when the node first needs it and kept.
        let cluster_id = global(INTERNAL_CLUSTER_ID).unwrap_or_else(|| {
            let id = new_cluster_id();
            definitions.record(Change::PutGlobalParameter(GlobalParameterDef {
                name: INTERNAL_CLUSTER_ID.into(),
                value: serde_json::Value::String(id.clone()),
            }));
            id
        });
        let broker = Broker {
            cluster_name: std::sync::RwLock::new(cluster_name),
            cluster_id: std::sync::RwLock::new(cluster_id),
            users: DashMap::new(),
            user_usage: DashMap::new(),
            user_changes: Default::default(),
            access: AccessControl::default(),
            vhosts: DashMap::new(),
            vhost_changes: Default::default(),
            connections: Connections::new(
                &descriptors,
                config.limits.max_unopened_connections_per_address,
            ),
            reply_consumers: Default::default(),
            timers: Timers::start()?,
            worker: Worker::start("lepus-dead-letters")?,
            memory,
            consumers: Budget::broker(config.limits.broker_consumer_bytes, Some(memory)),
            ledger: Default::default(),
            started_at_ms: super::timer::now_ms(),
            relief_pass_ms: Default::default(),
            creation_limits: CreationLimits::new(&config.limits),
            alarms: Alarms::start(
                &config.data_dir,
                store.shared.clone(),
                memory,
                config.limits.vm_memory_high_watermark,
                config.limits.disk_free_limit,
                config.limits.monitor_interval_ms,
            )?,
            store,
            definitions,
            config,
        };
        let mut report = RecoveryReport::default();
        broker.restore(&defs, &mut report)?;
        report.millis = started.elapsed().as_millis();
        let broker = Arc::new(broker);
        let weak = Arc::downgrade(&broker);
        broker.alarms.when_over_budget(move || {
            if let Some(broker) = weak.upgrade() {
                broker.relieve_memory();
            }
        });
        Ok((broker, report))
    }

    pub(super) fn vhost_services(&self) -> VhostServices {
        VhostServices {
            store: self.store.clone(),
            defs: self.definitions.clone(),
            timers: self.timers.clone(),
            memory: self.memory,
            worker: self.worker.clone(),
            limits: self.creation_limits.clone(),
            ledger: self.ledger.clone(),
            dead_letter_retry_ms: self.config.limits.dead_letter_retry_ms,
            frame_max_bytes: self.config.limits.frame_max_bytes,
            replies: self.reply_consumers.clone(),
        }
    }

    /// Puts everything the definitions name back in place.
    fn restore(&self, defs: &Definitions, report: &mut RecoveryReport) -> std::io::Result<()> {
        for u in &defs.users {
            self.users.insert(
                u.name.clone(),
                Arc::new(
                    User::new(&u.name, &u.password_hash)
                        .with_hashing(
                            auth::Hashing::from_name(&u.hashing_algorithm).unwrap_or_default(),
                        )
                        .with_tags(u.tags.clone())
                        .with_limits(u.limits),
                ),
            );
        }
        for p in &defs.permissions {
            self.access.set(
                &p.user,
                &p.vhost,
                VhostPermissions::new(&p.configure, &p.write, &p.read),
            );
        }
        for t in &defs.topic_permissions {
            self.access
                .set_topic(&t.user, &t.vhost, &t.exchange, &t.write, &t.read);
        }
        for v in &defs.vhosts {
            let vhost = VirtualHost::new(&v.name, self.vhost_services());
            vhost.set_limits(v.limits.clone());
            // Policies first, so that recovered queues and exchanges start with them.
            vhost.set_policies(&defs.policies);
            vhost.set_operator_policies(&defs.operator_policies);
            self.vhosts.insert(v.name.clone(), vhost);
        }
        for x in &defs.exchanges {
            let (Some(vhost), Some(kind)) = (self.vhost(&x.vhost), ExchangeKind::parse(&x.kind))
            else {
                continue;
            };
            // Recovered exchanges were accepted once: counted, never refused.
            let arguments = stored_arguments(&x.arguments, &x.lepus_arguments);
            let kept = Exchange::kept_bytes(&x.name, x.durable, &arguments);
            vhost.restore_exchange(
                Exchange::new(
                    x.name.clone(),
                    kind,
                    x.durable,
                    x.auto_delete,
                    x.internal,
                    arguments,
                )
                .declared_by(&x.lepus_user)
                .charged_to(
                    &self.creation_limits.topology,
                    self.creation_limits.topology.take_anyway(kept),
                ),
            );
            report.exchanges += 1;
        }
        let (known_ids, holding) = self.restore_queues(defs, report)?;
        self.restore_bindings(defs, report);
        for queue in holding {
            queue.route_held_again();
        }
        // Logs the definitions do not know (a queue deleted just before a crash, or one whose
        // vhost is gone): moved aside for an operator to look at, never deleted.
        for id in self.store.queue_ids_on_disk() {
            if !known_ids.contains(&id) {
                match self.store.move_aside(id) {
                    Ok(to) => tracing::warn!(
                        queue_id = id,
                        to = %to.display(),
                        "a queue log no definition refers to was moved aside"
                    ),
                    Err(e) => {
                        tracing::error!(queue_id = id, error = %e, "cannot move an unknown queue log aside")
                    }
                }
            }
        }
        Ok(())
    }

    /// Recovers every durable queue with its log. Returns the ids of the logs in use, and
    /// the queues that hold dead letters to route again.
    fn restore_queues(
        &self,
        defs: &Definitions,
        report: &mut RecoveryReport,
    ) -> std::io::Result<(Vec<u64>, Vec<Arc<Queue>>)> {
        let mut known_ids = Vec::new();
        let mut holding = Vec::new();
        for q in &defs.queues {
            let Some(vhost) = self.vhost(&q.vhost) else {
                continue;
            };
            let (log, recovered) = self.store.recover_queue_log(q.lepus_id)?;
            if recovered.torn {
                report.torn_logs += 1;
                tracing::warn!(queue = %q.name, vhost = %q.vhost, "cut a torn write at the end of the queue's log");
            }
            report.queues += 1;
            report.messages += recovered.count + recovered.held.len() as u64;
            known_ids.push(q.lepus_id);
            let policy = vhost.queue_policy(&q.name);
            let holds = !recovered.held.is_empty();
            let arguments = stored_arguments(&q.arguments, &q.lepus_arguments);
            // Recovered queues were accepted once: counted, never refused.
            let kept = QueueConfig::kept_bytes(&q.name, true, &arguments);
            let queue = Queue::recovered(
                QueueConfig {
                    name: q.name.clone(),
                    vhost: q.vhost.clone(),
                    durable: true,
                    auto_delete: q.auto_delete,
                    exclusive_owner: None,
                    arguments,
                    id: q.lepus_id,
                    share: Some(self.creation_limits.topology.take_anyway(kept)),
                },
                vhost.queue_services(),
                log,
                recovered,
                policy.as_ref(),
            );
            if holds {
                holding.push(queue.clone());
            }
            vhost.restore_queue(queue);
        }
        Ok((known_ids, holding))
    }

    fn restore_bindings(&self, defs: &Definitions, report: &mut RecoveryReport) {
        for b in &defs.bindings {
            let Some(vhost) = self.vhost(&b.vhost) else {
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
                    stored_arguments(&b.arguments, &b.lepus_arguments),
                );
                report.bindings += 1;
            }
        }
    }
}

/// As RabbitMQ does, the default users and vhosts are created on the first start only;
/// afterwards the definitions are the truth.
fn create_defaults(config: &Config, definitions: &Arc<DefinitionsStore>, defs: &mut Definitions) {
    let mut changes = Vec::new();
    for u in &config.users {
        changes.push(Change::PutUser(UserDef {
            name: u.name.clone(),
            password_hash: auth::new_password_hash(&u.password),
            hashing_algorithm: auth::HASHING_ALGORITHM.into(),
            tags: vec!["administrator".into()],
            limits: Default::default(),
        }));
    }
    for v in &config.vhosts {
        changes.push(Change::PutVhost(VhostDef::named(v)));
        for u in &config.users {
            changes.push(Change::PutPermission(PermissionDef {
                user: u.name.clone(),
                vhost: v.clone(),
                configure: ".*".into(),
                write: ".*".into(),
                read: ".*".into(),
            }));
        }
    }
    for change in changes {
        defs.apply(change.clone());
        definitions.record(change);
    }
}

/// Arguments the definitions hold. They were checked when they were recorded; ones that
/// cannot be read now are left out, said in the log, rather than stopping the start.
fn stored_arguments(json: &serde_json::Value, typed: &str) -> amq_protocol::types::FieldTable {
    decode_arguments(json, typed).unwrap_or_else(|e| {
        tracing::error!(error = %e, arguments = %json, "stored arguments cannot be read; left out");
        amq_protocol::types::FieldTable::default()
    })
}

/// Shares the open files out, after the soft limit is raised to the hard one: AMQP takes
/// `configured` connections, or fewer if the limit allows fewer (`alarms::sockets_limit`,
/// said in the log); the HTTP listeners half of what that leaves, the store the rest.
/// Refuses to start when no connection at all would be taken.
pub(super) fn share_descriptors(configured: usize) -> std::io::Result<DescriptorShare> {
    share_of(super::alarms::raise_file_descriptor_limit(), configured)
}

/// [`share_descriptors`] for a process allowed `fd_limit` open files (0: unknown).
fn share_of(fd_limit: u64, configured: usize) -> std::io::Result<DescriptorShare> {
    let sockets = super::alarms::sockets_limit(fd_limit);
    if sockets == 0 {
        return Err(std::io::Error::other(format!(
            "the open-files limit ({fd_limit}, ulimit -n) leaves no room for client connections; raise it to 1024 or more"
        )));
    }
    if sockets < configured {
        tracing::warn!(
            max_connections = configured,
            file_descriptors = fd_limit,
            sockets,
            "the open-files limit (ulimit -n) allows fewer connections than max_connections: taking {sockets} (raise the limit to take more)"
        );
    }
    let left = usize::try_from(fd_limit)
        .unwrap_or(usize::MAX)
        .saturating_sub(sockets);
    let unknown = sockets == usize::MAX;
    Ok(DescriptorShare {
        amqp_connections: configured.min(sockets),
        http_connections: if unknown { usize::MAX } else { left / 2 },
        store_files: if unknown {
            STORE_FILES_UNLIMITED
        } else {
            (left - left / 2)
                .saturating_sub(STORE_FILES_RESERVED)
                .max(1)
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_files_are_shared_between_amqp_http_and_the_store() {
        // RabbitMQ's 832 sockets of 1,024; the HTTP listeners half of the 192 left.
        let share = share_of(1024, 65_536).unwrap();
        assert_eq!((share.amqp_connections, share.http_connections), (832, 96));
        assert_eq!(share.store_files, 96 - STORE_FILES_RESERVED);
        let roomy = share_of(1 << 20, 65_536).unwrap();
        assert_eq!(roomy.amqp_connections, 65_536);
        assert!(roomy.http_connections > 512);
        let unknown = share_of(0, 65_536).unwrap();
        assert_eq!(
            (unknown.amqp_connections, unknown.http_connections),
            (65_536, usize::MAX)
        );
        let refused = share_of(64, 65_536).err().expect("no room for connections");
        assert!(refused.to_string().contains("ulimit -n"), "{refused}");
    }
}
