//! The registry of live client connections: how the broker reaches every connection to close
//! it (shutdown, an operator) without knowing what protocol it speaks.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use dashmap::DashMap;
use tokio::sync::watch;

use super::stats::ConnectionInfo;

/// What the broker can ask of a live connection.
pub trait ConnectionControl: Send + Sync {
    /// Close the connection, telling the client `code` and `text` (e.g. 320
    /// CONNECTION_FORCED).
    fn close(&self, code: u16, text: String);
    /// What operators see of the connection.
    fn info(&self) -> &Arc<ConnectionInfo>;
}

/// Live connections by id.
pub struct Connections {
    live: DashMap<u64, Arc<dyn ConnectionControl>>,
    next_id: AtomicU64,
    /// Set once shutdown began: new connections are refused.
    shutting_down: AtomicBool,
    /// Whether the AMQP side runs: `lepusctl stop_app` sets it false (listeners close,
    /// connections are closed and refused) and `start_app` true again; the process, the
    /// store and the management listeners stay.
    app_running: watch::Sender<bool>,
    /// Connections accepted at most.
    max_connections: usize,
}

impl std::fmt::Debug for Connections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connections")
            .field("live", &self.live.len())
            .finish_non_exhaustive()
    }
}

impl Connections {
    pub fn new(max_connections: usize) -> Self {
        Connections {
            live: DashMap::new(),
            next_id: AtomicU64::new(1),
            shutting_down: AtomicBool::new(false),
            app_running: watch::Sender::new(true),
            max_connections,
        }
    }

    /// Registers a new connection made by `make` from its id, unless the broker is full or
    /// shutting down.
    pub fn register<T: ConnectionControl + 'static>(
        &self,
        make: impl FnOnce(u64) -> Arc<T>,
    ) -> Option<Arc<T>> {
        if self.refusing() || self.live.len() >= self.max_connections {
            return None;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let conn = make(id);
        self.live.insert(id, conn.clone());
        // A shutdown or stop_app that began between the check and the insert closed the
        // connections it saw, which may not include this one: look again.
        if self.refusing() {
            self.live.remove(&id);
            return None;
        }
        Some(conn)
    }

    /// Connections accepted at most: `max_connections`, or fewer if the open-files limit
    /// says so (RabbitMQ's `sockets_total`).
    pub fn max_connections(&self) -> usize {
        self.max_connections
    }

    fn refusing(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire) || !*self.app_running.borrow()
    }

    /// `stop_app`: closes every connection with 320 CONNECTION_FORCED and refuses new ones
    /// until [`Connections::start_app`]; the listeners close their sockets when they see it.
    pub fn stop_app(&self) {
        self.app_running.send_replace(false);
        self.close_all();
    }

    /// `start_app`: the listeners open again and connections are accepted.
    pub fn start_app(&self) {
        self.app_running.send_replace(true);
    }

    /// Whether the AMQP side runs (false after `stop_app`).
    pub fn app_running(&self) -> bool {
        *self.app_running.borrow()
    }

    /// Follows `stop_app` and `start_app`, for the listeners.
    pub fn watch_app(&self) -> watch::Receiver<bool> {
        self.app_running.subscribe()
    }

    pub fn unregister(&self, id: u64) {
        self.live.remove(&id);
    }

    /// Every live connection, in the order they were accepted.
    pub fn list(&self) -> Vec<Arc<dyn ConnectionControl>> {
        let mut all: Vec<_> = self.live.iter().map(|c| c.value().clone()).collect();
        all.sort_by_key(|c| c.info().id);
        all
    }

    /// The live connection RabbitMQ would call `name` (`peer -> local`).
    pub fn by_name(&self, name: &str) -> Option<Arc<dyn ConnectionControl>> {
        self.live
            .iter()
            .find(|c| c.value().info().name() == name)
            .map(|c| c.value().clone())
    }

    pub fn count(&self) -> usize {
        self.live.len()
    }

    /// Refuses new connections and asks every live one to close with 320 CONNECTION_FORCED.
    pub fn shut_down(&self) {
        self.shutting_down.store(true, Ordering::Release);
        self.close_all();
    }

    /// RabbitMQ's words when its application stops, for shutdown and `stop_app` alike.
    fn close_all(&self) {
        for c in self.live.iter() {
            c.value().close(
                320,
                "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'"
                    .into(),
            );
        }
    }
}
