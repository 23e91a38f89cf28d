//! The HTTP listeners' connections: bounded in number, closed when idle, and given a
//! deadline for each request's head, so that clients holding connections open cannot use up
//! the broker's memory or lock operators out for long.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::response::Response;
use axum::serve::Listener;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tower::{Service, ServiceExt};

/// HTTP connections served at once per listener; further ones wait to be accepted.
pub const MAX_HTTP_CONNECTIONS: usize = 256;
/// HTTP connections one client address may hold at once: a client that holds connections
/// open (sending a byte now and then, as slowloris does) cannot take every slot from one
/// address. A browser opens six or so. An IPv6 client is counted by its /64, which one
/// host is usually given whole: counted by address, it could take every slot alone.
pub const MAX_HTTP_CONNECTIONS_PER_PEER: usize = 32;
/// How long a client has to send a request's head (its request line and headers) once the
/// connection waits for one: a new connection, or one between requests. The idle timeout
/// alone let a client that sends a byte a minute hold a slot for ever without ever having
/// been asked for credentials. hyper has this deadline, but axum's `serve` leaves it
/// unarmed (it gives hyper no timer), so the listeners serve their connections themselves.
pub const HTTP_HEAD_TIMEOUT: Duration = Duration::from_secs(20);
/// The most an HTTP connection buffers of what a client sends (a request's head, or what
/// of a body has not been taken yet); hyper looks between reads, so a head may reach about
/// twice this before it is refused. hyper's default is about 400 KiB: 256 connections
/// that each sent that much of a head held 100 MiB no gauge counted. Real heads take a few
/// KiB (a browser's cookies included); a longer one is answered 431.
pub const HTTP_READ_BUFFER_MAX_BYTES: usize = 64 * 1024;
/// A connection that sends nothing for this long is closed (between requests, or in the
/// middle of one), and so is one that takes nothing of an answer for this long: a client
/// that asks for a long list and never reads it would otherwise hold its slot, and what the
/// answer holds, for ever.
pub const HTTP_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// A TCP listener that holds a slot for every connection it hands out.
pub struct Bounded {
    inner: TcpListener,
    slots: Arc<Semaphore>,
    per_peer: Arc<Mutex<HashMap<IpAddr, usize>>>,
    /// Connections one address may hold: [`MAX_HTTP_CONNECTIONS_PER_PEER`], or an eighth
    /// of a room the open-files limit made smaller (6 of 48), so that it still takes eight
    /// addresses to fill it.
    per_peer_max: usize,
    /// [`HTTP_IDLE_TIMEOUT`], shorter in tests.
    idle_after: Duration,
}

impl Bounded {
    pub fn new(inner: TcpListener) -> Bounded {
        Bounded::with_room(inner, MAX_HTTP_CONNECTIONS)
    }

    /// A listener serving at most `connections` at once (at most [`MAX_HTTP_CONNECTIONS`]):
    /// fewer where the open-files limit leaves fewer descriptors.
    pub fn with_room(inner: TcpListener, connections: usize) -> Bounded {
        let room = connections.clamp(1, MAX_HTTP_CONNECTIONS);
        Bounded {
            inner,
            slots: Arc::new(Semaphore::new(room)),
            per_peer_max: (room / 8).clamp(1, MAX_HTTP_CONNECTIONS_PER_PEER),
            per_peer: Arc::default(),
            idle_after: HTTP_IDLE_TIMEOUT,
        }
    }

    /// Counts a connection from `ip`, unless that address holds as many as it may.
    fn admit(&self, ip: IpAddr) -> Option<PeerSlot> {
        let ip = peer_key(ip);
        let mut counts = self.per_peer.lock().unwrap_or_else(|e| e.into_inner());
        let count = counts.entry(ip).or_default();
        if *count >= self.per_peer_max {
            return None;
        }
        *count += 1;
        Some(PeerSlot {
            counts: self.per_peer.clone(),
            ip,
        })
    }
}

/// What a client's connections are counted under: its IPv4 address (also when it comes as an
/// IPv4-mapped IPv6 one), or its IPv6 /64; the same networks as AMQP's per-address limits.
pub use crate::broker::connections::network_of as peer_key;

/// Serves `app` on `listener`'s connections until aborted, as `axum::serve` does, but with
/// hyper's deadline for each request's head armed ([`HTTP_HEAD_TIMEOUT`], shorter in tests).
/// Handlers find the client's address as `ConnectInfo<Peer>`.
pub async fn serve<S>(mut listener: Bounded, app: S, head_timeout: Duration)
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    loop {
        let (io, peer) = listener.accept().await;
        let app = app.clone();
        let service = hyper::service::service_fn(move |req: hyper::Request<_>| {
            let mut req = req.map(Body::new);
            req.extensions_mut().insert(ConnectInfo(Peer(peer)));
            app.clone().oneshot(req)
        });
        tokio::spawn(async move {
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(head_timeout)
                .max_buf_size(HTTP_READ_BUFFER_MAX_BYTES);
            if let Err(e) = http.serve_connection(TokioIo::new(io), service).await {
                tracing::debug!(%peer, error = %e, "an HTTP connection ended with an error");
            }
        });
    }
}

/// One of an address's connections, given back when the connection ends.
struct PeerSlot {
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
    ip: IpAddr,
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = counts.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

impl Listener for Bounded {
    type Io = Guarded;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Guarded, SocketAddr) {
        loop {
            // The semaphore is never closed; if it were, serving without a bound would
            // be wrong, so wait and try again.
            let Ok(permit) = self.slots.clone().acquire_owned().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            match self.inner.accept().await {
                Ok((stream, peer)) => {
                    let Some(peer_slot) = self.admit(peer.ip()) else {
                        tracing::debug!(%peer, "refused an HTTP connection: its address holds too many");
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    return (
                        Guarded::new(stream, permit, peer_slot, self.idle_after),
                        peer,
                    );
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// The client's address, for handlers (`loopback_users`).
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

/// One accepted connection: its slot, and the deadline it must send or take something by.
pub struct Guarded {
    stream: TcpStream,
    _slot: OwnedSemaphorePermit,
    _peer_slot: PeerSlot,
    /// Moved on whenever bytes go either way.
    idle: Pin<Box<Sleep>>,
    idle_after: Duration,
}

impl Guarded {
    fn new(
        stream: TcpStream,
        slot: OwnedSemaphorePermit,
        peer_slot: PeerSlot,
        idle_after: Duration,
    ) -> Guarded {
        Guarded {
            stream,
            _slot: slot,
            _peer_slot: peer_slot,
            idle: Box::pin(tokio::time::sleep(idle_after)),
            idle_after,
        }
    }

    /// `io` as it came, moving the deadline on when it is ready, or a timeout once the
    /// deadline passes while it is not.
    fn progress<T>(
        &mut self,
        cx: &mut Context<'_>,
        io: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match io {
            Poll::Ready(result) => {
                self.idle.as_mut().reset(Instant::now() + self.idle_after);
                Poll::Ready(result)
            }
            Poll::Pending => match self.idle.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(io::ErrorKind::TimedOut.into())),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let read = Pin::new(&mut this.stream).poll_read(cx, buf);
        this.progress(cx, read)
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let written = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.progress(cx, written)
    }

    /// hyper writes a response's head and body chunks in one call when it can, instead of
    /// copying each chunk into its own buffer first.
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let written = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.progress(cx, written)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A client that asks and then takes nothing of the answer is dropped once the
    /// answer has made no progress for the idle time, as one that sends nothing is.
    #[tokio::test]
    async fn a_client_that_takes_nothing_of_an_answer_is_dropped() {
        let inner = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = inner.local_addr().expect("address");
        let mut listener = Bounded {
            idle_after: Duration::from_millis(200),
            ..Bounded::new(inner)
        };
        let _client = TcpStream::connect(addr).await.expect("connect");
        let (mut served, _) = listener.accept().await;
        let chunk = vec![b'x'; 64 * 1024];
        let stalled = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                if let Err(e) = served.write_all(&chunk).await {
                    return e;
                }
            }
        })
        .await
        .expect("the write gave up");
        assert_eq!(stalled.kind(), io::ErrorKind::TimedOut);
        // The same for hyper's vectored writes.
        let again = served.write_vectored(&[io::IoSlice::new(&chunk)]).await;
        assert_eq!(
            again.map_err(|e| e.kind()).err(),
            Some(io::ErrorKind::TimedOut)
        );
    }

    /// A client that trickles a request's head, a byte at a time well within the idle
    /// time, is dropped once the head's deadline passes, without an answer; one that sends
    /// its head in time is answered on the same kind of connection.
    #[tokio::test]
    async fn a_request_head_trickled_past_its_deadline_is_dropped() {
        use tokio::io::AsyncReadExt;
        let inner = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = inner.local_addr().expect("address");
        let app = axum::Router::new().route("/", axum::routing::get(|| async { "hello" }));
        let server = tokio::spawn(serve(Bounded::new(inner), app, Duration::from_millis(300)));

        let mut prompt = TcpStream::connect(addr).await.expect("connect");
        prompt
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .expect("send");
        let mut answer = String::new();
        prompt.read_to_string(&mut answer).await.expect("answer");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("hello"), "{answer}");

        let mut slow = TcpStream::connect(addr).await.expect("connect");
        let head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Padding: ";
        let trickled = async {
            for byte in head.iter().chain(std::iter::repeat(&b'a')) {
                if slow.write_all(&[*byte]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                // The server closing shows as a read of nothing (or a reset).
                let mut buf = [0u8; 64];
                match tokio::time::timeout(Duration::from_millis(1), slow.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => break,
                    Ok(Ok(n)) => panic!("answered: {:?}", String::from_utf8_lossy(&buf[..n])),
                    Err(_) => {}
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(30), trickled)
            .await
            .expect("the trickled connection was not closed");
        server.abort();
    }

    /// Same as for addresses: IPv6 clients are counted by their /64, IPv4-mapped ones as
    /// the IPv4 address they are.
    #[test]
    fn ipv6_clients_are_counted_by_their_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().expect("address");
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().expect("address");
        let other: IpAddr = "2001:db8:1:3::1".parse().expect("address");
        assert_eq!(peer_key(a), peer_key(b));
        assert_ne!(peer_key(a), peer_key(other));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().expect("address");
        let v4: IpAddr = "192.0.2.7".parse().expect("address");
        assert_eq!(peer_key(mapped), v4);
        assert_eq!(peer_key(v4), v4);
        assert_ne!(peer_key("192.0.2.8".parse().expect("address")), v4);
    }
}
