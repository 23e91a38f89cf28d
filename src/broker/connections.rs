//! The registry of live client connections: how the broker reaches every connection to close
//! it (shutdown, an operator) without knowing what protocol it speaks.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

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

/// One AMQP listener closed for `stop_app` ([`Connections::listener_closing`]).
pub struct ClosedListener<'a>(&'a watch::Sender<usize>);

impl Drop for ClosedListener<'_> {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
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
    /// AMQP listeners closed by `stop_app` and not yet open again: `start_app` answers once
    /// this is back to 0, so that a client connecting as soon as `rabbitmqctl start_app`
    /// returns is accepted, as by RabbitMQ (the Java client's test suite does just that).
    listeners_closed: watch::Sender<usize>,
    /// Connections accepted at most.
    max_connections: usize,
    /// Connections the HTTP listeners may hold together: what the open-files limit leaves
    /// them (`recovery::share_descriptors`).
    http_connections: usize,
    /// Connections not opened yet, by client network ([`network_of`]).
    unopened: Arc<Mutex<HashMap<IpAddr, usize>>>,
    /// Of those, one network holds at most this many.
    max_unopened_per_network: usize,
    /// Connections refused for it, so the log says so at the 1st, 2nd, 4th, 8th... only.
    unopened_refused: AtomicU64,
}

/// The network a client address counts in for per-address limits: an IPv4 address (an
/// IPv4-mapped IPv6 one too), or the /64 of an IPv6 one, which one host is usually given
/// whole: counted by address, one host could take every place alone.
pub fn network_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & !u128::from(u64::MAX))),
        },
    }
}

/// How the process's open files are shared out (`recovery::share_descriptors`).
pub struct DescriptorShare {
    /// AMQP connections taken at most.
    pub amqp_connections: usize,
    /// Connections the HTTP listeners (management and Prometheus) may hold together.
    pub http_connections: usize,
    /// Segment files the store keeps open at once (`store::file_cache`): what the
    /// connections leave, less the HTTP share and [`STORE_FILES_RESERVED`].
    pub store_files: usize,
}

/// Descriptors the store holds beyond its file cache's bound, kept out of its share: a
/// directory or a file written whole (`Fs::write_synced`) being synced, and files the cache
/// closed that an operation in flight still holds.
pub const STORE_FILES_RESERVED: usize = 16;

/// Files the store keeps open when the open-files limit is unknown or unlimited.
pub const STORE_FILES_UNLIMITED: usize = 65_536;

/// A connection's place among its network's unopened connections, given back when it
/// opens or goes.
#[derive(Debug)]
pub struct Unopened {
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
    network: IpAddr,
}

impl Drop for Unopened {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = counts.get_mut(&self.network) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.network);
            }
        }
    }
}

impl std::fmt::Debug for Connections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connections")
            .field("live", &self.live.len())
            .finish_non_exhaustive()
    }
}

impl Connections {
    pub fn new(share: &DescriptorShare, max_unopened_per_network: usize) -> Self {
        Connections {
            live: DashMap::new(),
            next_id: AtomicU64::new(1),
            shutting_down: AtomicBool::new(false),
            app_running: watch::Sender::new(true),
            listeners_closed: watch::Sender::new(0),
            max_connections: share.amqp_connections,
            http_connections: share.http_connections,
            unopened: Default::default(),
            max_unopened_per_network,
            unopened_refused: AtomicU64::new(0),
        }
    }

    /// A place for a new connection from `peer` among its network's unopened connections
    /// (`max_unopened_connections_per_address`), or `None`, said in the log now and then.
    pub fn admit_unopened(&self, peer: IpAddr) -> Option<Unopened> {
        let network = network_of(peer);
        {
            let mut counts = self.unopened.lock().unwrap_or_else(|e| e.into_inner());
            // Refused, a network leaves no entry behind (with a cap of 0, every address that
            // tried would).
            if counts.get(&network).copied().unwrap_or(0) < self.max_unopened_per_network {
                *counts.entry(network).or_default() += 1;
                return Some(Unopened {
                    counts: self.unopened.clone(),
                    network,
                });
            }
        }
        let refused = self.unopened_refused.fetch_add(1, Ordering::Relaxed) + 1;
        if refused.is_power_of_two() {
            tracing::warn!(
                %network,
                refused,
                "connection refused: {} connections from this network have not opened yet (max_unopened_connections_per_address)",
                self.max_unopened_per_network
            );
        }
        None
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

    /// Connections the HTTP listeners may hold together (each takes at most half).
    pub fn http_connections(&self) -> usize {
        self.http_connections
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

    /// A listener about to close for `stop_app`: counted as closed until the guard drops,
    /// once it listens again (or gives up).
    pub fn listener_closing(&self) -> ClosedListener<'_> {
        self.listeners_closed.send_modify(|n| *n += 1);
        ClosedListener(&self.listeners_closed)
    }

    /// Returns once every listener `stop_app` closed listens again. A listener not yet
    /// counted is not waited for: it counts itself before it looks whether the app runs,
    /// and keeps its socket if it does (`server::closed_until_started`).
    pub async fn listening(&self) {
        let mut closed = self.listeners_closed.subscribe();
        // The sender lives in `self`, so the wait cannot fail.
        let _ = closed.wait_for(|n| *n == 0).await;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// IPv6 clients count by /64, IPv4 (also written as IPv6) by address.
    #[test]
    fn addresses_share_by_network() {
        let ip = |s: &str| s.parse::<std::net::IpAddr>().expect("address");
        assert_eq!(network_of(ip("10.1.2.3")), ip("10.1.2.3"));
        assert_eq!(network_of(ip("::ffff:10.1.2.3")), ip("10.1.2.3"));
        assert_eq!(network_of(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(
            network_of(ip("2001:db8:1:2:bbbb::9")),
            network_of(ip("2001:db8:1:2:aaaa::1"))
        );
    }
}
