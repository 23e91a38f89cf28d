//! Listening sockets: bind an address, accept transports.

use std::io;
use std::net::SocketAddr;

use tokio::net::TcpListener;

use super::transport::Transport;

/// A bound listening socket.
#[derive(Debug)]
pub struct Listener {
    inner: TcpListener,
}

impl Listener {
    /// Binds `addr` (port 0 picks a free port).
    pub async fn bind(addr: SocketAddr) -> io::Result<Listener> {
        Ok(Listener {
            inner: TcpListener::bind(addr).await?,
        })
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
        Ok((Transport::Tcp(stream), peer))
    }
}
