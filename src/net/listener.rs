//! Listening sockets: bind an address, accept transports.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};

use std::sync::Arc;

use rustls::ServerConfig;
use tokio::net::TcpListener;

use super::tls::TlsStream;
use super::transport::Transport;

/// A bound listening socket.
#[derive(Debug)]
pub struct Listener {
    inner: TcpListener,
    /// TLS for every connection accepted here, if this is a TLS listener.
    tls: Option<Arc<ServerConfig>>,
}

impl Listener {
    /// Binds `addr` (port 0 picks a free port).
    pub async fn bind(addr: SocketAddr) -> io::Result<Listener> {
        Ok(Listener {
            inner: TcpListener::bind(addr).await?,
            tls: None,
        })
    }

    /// The same listener, speaking TLS with this configuration.
    pub fn with_tls(mut self, config: Arc<ServerConfig>) -> Listener {
        self.tls = Some(config);
        self
    }

    /// Whether connections accepted here speak TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Binds `addr`, and for the IPv6 wildcard (`[::]`) makes sure IPv4 clients are served
    /// too, as RabbitMQ's default listener does: where the OS makes `[::]` dual-stack (Linux
    /// unless `net.ipv6.bindv6only` is set) one socket takes both; where it does not, a
    /// second socket listens on `0.0.0.0` at the same port; where there is no IPv6 at all,
    /// `0.0.0.0` alone.
    pub async fn bind_all(addr: SocketAddr) -> io::Result<Vec<Listener>> {
        let wildcard_v6 = matches!(addr, SocketAddr::V6(v6) if v6.ip().is_unspecified());
        if !wildcard_v6 {
            return Ok(vec![Listener::bind(addr).await?]);
        }
        let v4 = |port| SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
        let v6 = match Listener::bind(addr).await {
            Ok(l) => l,
            Err(e) if e.kind() != io::ErrorKind::AddrInUse => {
                tracing::info!(error = %e, "no IPv6 here; listening on IPv4 only");
                return Ok(vec![Listener::bind(v4(addr.port())).await?]);
            }
            Err(e) => return Err(e),
        };
        let port = v6.local_addr()?.port();
        match Listener::bind(v4(port)).await {
            Ok(also) => Ok(vec![v6, also]),
            // The IPv6 socket already takes IPv4 connections on this port.
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => Ok(vec![v6]),
            Err(e) => Err(e),
        }
    }

    /// Closes the socket (clients are refused from now on), keeping what it takes to open
    /// it again on the same address.
    pub fn close(self) -> Result<Closed, (Listener, io::Error)> {
        match self.inner.local_addr() {
            Ok(addr) => Ok(Closed {
                addr,
                tls: self.tls,
            }),
            Err(e) => Err((self, e)),
        }
    }

    /// The bound address, with the real port.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    /// Accepts the next connection. Small frames go out at once (no Nagle delay): the broker
    /// batches its own writes.
    pub async fn accept(&self) -> io::Result<(Transport, SocketAddr)> {
        let (stream, peer) = self.inner.accept().await?;
        let _ = stream.set_nodelay(true);
        let transport = match &self.tls {
            None => Transport::Tcp(stream),
            Some(config) => Transport::Tls(Box::new(TlsStream::new(stream, config.clone())?)),
        };
        Ok((transport, peer))
    }
}

/// A listener closed by `stop_app`, to be opened again by `start_app`.
#[derive(Debug)]
pub struct Closed {
    /// The address it had, with the real port (so a port chosen by the OS is kept).
    addr: SocketAddr,
    tls: Option<Arc<ServerConfig>>,
}

impl Closed {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Binds the same address again.
    pub async fn reopen(&self) -> io::Result<Listener> {
        let listener = Listener::bind(self.addr).await?;
        Ok(match &self.tls {
            Some(tls) => listener.with_tls(tls.clone()),
            None => listener,
        })
    }
}
