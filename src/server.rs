//! The running broker: opens the data directory, binds the listeners, hands every accepted
//! connection to the AMQP connection task, and shuts down cleanly. This is the top of the
//! crate: it wires the layers together and nothing imports it but `main` and the tests.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::amqp::outbox::Outbox;
use crate::broker::Broker;
use crate::broker::connections::Connections;
use crate::broker::stats::ConnectionInfo;
use crate::config::Config;
use crate::mgmt::state::Mgmt;
use crate::net::Listener;

/// How long a listener waits before trying again to bind its address after `start_app`.
const REOPEN_RETRY: Duration = Duration::from_millis(200);

/// How long shutdown waits for connections to say goodbye.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A running broker: its listeners and the tasks serving its connections.
pub struct Server {
    broker: Arc<Broker>,
    addrs: Vec<SocketAddr>,
    /// The TLS listeners' addresses.
    tls_addrs: Vec<SocketAddr>,
    listeners: Vec<JoinHandle<()>>,
    /// The admin socket `lepusctl` talks to (none if it could not be made).
    admin: Option<JoinHandle<()>>,
    /// The management and Prometheus listeners and the rate sampler.
    http: Vec<JoinHandle<()>>,
    management_addr: Option<SocketAddr>,
    prometheus_addr: Option<SocketAddr>,
    live: Arc<Live>,
}

/// Counts connection tasks so shutdown can wait for them.
#[derive(Default)]
struct Live {
    count: AtomicUsize,
    idle: Notify,
}

struct LiveGuard(Arc<Live>);

impl Drop for LiveGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Server {
    /// Binds every listen address and starts accepting connections.
    pub async fn start(config: Config) -> std::io::Result<Server> {
        Self::start_on(Arc::new(crate::store::fs::RealFs), config).await
    }

    /// [`Server::start`] with the store on a file system of the caller's choosing (tests
    /// simulate a failing disk).
    pub async fn start_on(
        fs: Arc<dyn crate::store::fs::Fs>,
        config: Config,
    ) -> std::io::Result<Server> {
        let mut bound = Vec::new();
        for addr in &config.listen {
            bound.extend(Listener::bind_all(*addr).await?);
        }
        if !config.tls_listen.is_empty() {
            let options = config.tls.as_ref().ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "listeners.ssl needs ssl_options.certfile and ssl_options.keyfile",
                )
            })?;
            let tls = crate::net::tls::server_config(options)?;
            for addr in &config.tls_listen {
                for listener in Listener::bind_all(*addr).await? {
                    bound.push(listener.with_tls(tls.clone()));
                }
            }
        }
        let (broker, report) = tokio::task::spawn_blocking(move || {
            let (broker, report) = Broker::open_on(fs, config)?;
            load_definitions(&broker)?;
            Ok::<_, std::io::Error>((broker, report))
        })
        .await
        .map_err(std::io::Error::other)??;
        tracing::info!(
            queues = report.queues,
            messages = report.messages,
            exchanges = report.exchanges,
            bindings = report.bindings,
            torn_logs = report.torn_logs,
            millis = report.millis as u64,
            "recovered the data directory"
        );
        let live = Arc::new(Live::default());
        let mut addrs = Vec::new();
        let mut tls_addrs = Vec::new();
        let mut listeners = Vec::new();
        for listener in bound {
            if listener.is_tls() {
                tls_addrs.push(listener.local_addr()?);
            } else {
                addrs.push(listener.local_addr()?);
            }
            listeners.push(tokio::spawn(accept_loop(
                listener,
                broker.clone(),
                live.clone(),
            )));
        }
        let mgmt = Mgmt::new(broker.clone());
        let (http, management_addr, prometheus_addr) = start_http(&mgmt, &addrs, &tls_addrs).await;
        let admin_path = crate::mgmt::admin::socket_path(&broker.config.data_dir);
        // The admin socket is for operators; a broker that cannot make one still serves.
        let admin = match crate::mgmt::admin::serve(mgmt.clone(), &admin_path) {
            Ok(admin) => Some(admin),
            Err(e) => {
                tracing::warn!(path = %admin_path.display(), error = %e, "cannot open the admin socket; lepusctl will not reach this broker");
                None
            }
        };
        Ok(Server {
            broker,
            addrs,
            tls_addrs,
            listeners,
            admin,
            http,
            management_addr,
            prometheus_addr,
            live,
        })
    }

    /// Where the management API listens, if it does.
    pub fn management_addr(&self) -> Option<SocketAddr> {
        self.management_addr
    }

    /// Where Prometheus metrics are served, if they are.
    pub fn prometheus_addr(&self) -> Option<SocketAddr> {
        self.prometheus_addr
    }

    /// The first bound address (with the real port when port 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addrs
            .first()
            .or_else(|| self.tls_addrs.first())
            .copied()
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Every bound address of a plain listener.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Every bound address of a TLS listener.
    pub fn tls_addrs(&self) -> &[SocketAddr] {
        &self.tls_addrs
    }

    /// The broker's shared state, for tests and tooling.
    pub fn broker(&self) -> &Arc<Broker> {
        &self.broker
    }

    /// Stops accepting, sends every client Connection.Close 320 CONNECTION_FORCED, and waits
    /// briefly for the connections to end.
    pub async fn shutdown(self) {
        for l in &self.listeners {
            l.abort();
        }
        if let Some(admin) = &self.admin {
            admin.abort();
        }
        for task in &self.http {
            task.abort();
        }
        let _ = std::fs::remove_file(crate::mgmt::admin::socket_path(
            &self.broker.config.data_dir,
        ));
        self.broker.begin_shutdown();
        let wait = async {
            loop {
                let idle = self.live.idle.notified();
                if self.live.count.load(Ordering::Acquire) == 0 {
                    return;
                }
                idle.await;
            }
        };
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, wait).await;
        let broker = self.broker.clone();
        let _ = tokio::task::spawn_blocking(move || broker.close_store()).await;
    }
}

/// After `stop_app`: closes the listening socket, so that clients are refused as by a
/// stopped RabbitMQ, waits for `start_app` and binds the same address again (retrying while
/// the port is still taken). None if the broker is gone.
async fn closed_until_started(
    listener: Listener,
    app: &mut tokio::sync::watch::Receiver<bool>,
    connections: &Connections,
) -> Option<Listener> {
    // `start_app` answers once this is dropped, with the socket open again.
    let _closed = connections.listener_closing();
    // A `start_app` since the loop saw the app stopped found the listener not yet counted
    // and answered: keep the socket, so that its client is not refused. One after this
    // finds it counted and waits.
    if *app.borrow() {
        return Some(listener);
    }
    let closed = match listener.close() {
        Ok(closed) => closed,
        // Without its address the socket cannot be opened again: keep it, and refuse
        // connections in `register` instead.
        Err((listener, e)) => {
            tracing::warn!(error = %e, "cannot close the listener for stop_app");
            app.wait_for(|running| *running).await.ok()?;
            return Some(listener);
        }
    };
    tracing::info!(addr = %closed.addr(), "AMQP listener closed (stop_app)");
    app.wait_for(|running| *running).await.ok()?;
    let mut failures = 0u64;
    loop {
        match closed.reopen().await {
            Ok(listener) => {
                tracing::info!(addr = %closed.addr(), "AMQP listener open again (start_app)");
                return Some(listener);
            }
            Err(e) => {
                // Said once, then every minute or so: another process may hold the port.
                if failures.is_multiple_of(300) {
                    tracing::warn!(addr = %closed.addr(), error = %e, "cannot reopen the listener; retrying");
                }
                failures += 1;
                tokio::time::sleep(REOPEN_RETRY).await;
            }
        }
    }
}

/// Starts the management API (with its rate sampler) and the Prometheus endpoint where the
/// configuration asks. A port that cannot be bound is logged and skipped: AMQP clients are
/// served all the same, as they are when the admin socket cannot be made.
async fn start_http(
    mgmt: &Arc<Mgmt>,
    amqp: &[SocketAddr],
    amqps: &[SocketAddr],
) -> (Vec<JoinHandle<()>>, Option<SocketAddr>, Option<SocketAddr>) {
    let config = &mgmt.broker.config;
    let mut tasks = Vec::new();
    let mut listeners: Vec<(&'static str, SocketAddr)> = Vec::new();
    listeners.extend(amqp.iter().map(|a| ("amqp", *a)));
    listeners.extend(amqps.iter().map(|a| ("amqp/ssl", *a)));
    let mut management = None;
    if let Some(addr) = config.management_listen {
        match crate::mgmt::api::serve(mgmt.clone(), addr).await {
            Ok((local, task)) => {
                tasks.push(task);
                tasks.push(mgmt.rates.spawn(mgmt.broker.clone()));
                listeners.push(("http", local));
                management = Some(local);
            }
            Err(e) => tracing::error!(%addr, error = %e, "cannot open the management listener"),
        }
    }
    let mut prometheus = None;
    if let Some(addr) = config.prometheus_listen {
        match crate::mgmt::metrics::serve(mgmt.clone(), addr).await {
            Ok((local, task)) => {
                tasks.push(task);
                listeners.push(("http/prometheus", local));
                prometheus = Some(local);
            }
            Err(e) => tracing::error!(%addr, error = %e, "cannot open the Prometheus listener"),
        }
    }
    *mgmt.listeners.write().unwrap_or_else(|e| e.into_inner()) = listeners;
    (tasks, management, prometheus)
}

/// Imports the definitions file the configuration names (`load_definitions`), at every start
/// as RabbitMQ does; a file that cannot be read or applied stops the start.
fn load_definitions(broker: &Broker) -> std::io::Result<()> {
    let Some(path) = &broker.config.load_definitions else {
        return Ok(());
    };
    let fail =
        |why: String| std::io::Error::other(format!("load_definitions {}: {why}", path.display()));
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    let defs: crate::store::definitions::Definitions =
        serde_json::from_str(&text).map_err(|e| fail(e.to_string()))?;
    let report = broker
        .import_definitions(&defs, crate::broker::exchange::INTERNAL_USER)
        .map_err(fail)?;
    tracing::info!(
        path = %path.display(),
        users = report.users,
        vhosts = report.vhosts,
        permissions = report.permissions,
        policies = report.policies,
        exchanges = report.exchanges,
        queues = report.queues,
        bindings = report.bindings,
        "imported definitions"
    );
    Ok(())
}

async fn accept_loop(mut listener: Listener, broker: Arc<Broker>, live: Arc<Live>) {
    let outbox_bytes = broker.config.limits.connection_outbox_bytes;
    let local = listener
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let tls = listener.is_tls();
    let mut app = broker.connections.watch_app();
    loop {
        if !*app.borrow_and_update() {
            match closed_until_started(listener, &mut app, &broker.connections).await {
                Some(reopened) => listener = reopened,
                None => return,
            }
            continue;
        }
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = app.changed() => continue,
        };
        let (transport, peer) = match accepted {
            Ok(conn) => conn,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(unopened) = broker.connections.admit_unopened(peer.ip()) else {
            drop(transport);
            continue;
        };
        let registered = broker.connections.register(|id| {
            let info = ConnectionInfo::new(id, peer, local, tls);
            Arc::new(Outbox::new(Arc::new(info), outbox_bytes))
        });
        let Some(outbox) = registered else {
            tracing::warn!(
                %peer,
                max_connections = broker.connections.max_connections(),
                "connection refused: connection limit reached (max_connections, or the open-files limit) or shutting down"
            );
            drop(transport);
            continue;
        };
        tracing::info!(%peer, "accepting AMQP connection");
        live.count.fetch_add(1, Ordering::AcqRel);
        let guard = LiveGuard(live.clone());
        let broker = broker.clone();
        tokio::spawn(async move {
            crate::amqp::connection::serve(broker, transport, peer, outbox, unopened).await;
            drop(guard);
        });
    }
}
