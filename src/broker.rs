//! The broker's shared state: configuration, users, virtual hosts and the live connections.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use dashmap::DashMap;

use crate::auth::User;
use crate::config::Config;
use crate::outbox::{Outbox, OutboxEvent};
use crate::vhost::VirtualHost;

/// Everything connections share.
#[derive(Debug)]
pub struct Broker {
    pub config: Config,
    users: DashMap<String, Arc<User>>,
    vhosts: DashMap<String, Arc<VirtualHost>>,
    /// Live connections by id, to reach them at shutdown.
    connections: DashMap<u64, Arc<Outbox>>,
    next_connection_id: AtomicU64,
    /// Set once shutdown began: new connections are refused.
    shutting_down: AtomicBool,
}

impl Broker {
    pub fn new(config: Config) -> Arc<Self> {
        let broker = Broker {
            users: DashMap::new(),
            vhosts: DashMap::new(),
            connections: DashMap::new(),
            next_connection_id: AtomicU64::new(1),
            shutting_down: AtomicBool::new(false),
            config,
        };
        for u in &broker.config.users {
            broker.users.insert(
                u.name.clone(),
                Arc::new(User::new(&u.name, &u.password, u.loopback_only)),
            );
        }
        for v in &broker.config.vhosts {
            broker.vhosts.insert(v.clone(), VirtualHost::new(v));
        }
        Arc::new(broker)
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
