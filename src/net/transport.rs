//! The byte stream under a connection.
//!
//! The connection task works by readiness: it waits until the transport is readable or
//! writable, then reads or writes as much as it can without blocking, in batches. Those
//! operations are all it needs, so they are all a transport offers, over plain TCP or TLS.

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::task::{Context, Poll, Waker};

use tokio::io::{Interest, Ready};
use tokio::net::TcpStream;

use super::tls::TlsStream;

/// A client connection's byte stream.
#[derive(Debug)]
pub enum Transport {
    Tcp(TcpStream),
    Tls(Box<TlsStream>),
}

impl Transport {
    /// Waits until the transport is ready for any of `interest`.
    pub async fn ready(&self, interest: Interest) -> io::Result<Ready> {
        match self {
            Transport::Tcp(s) => s.ready(interest).await,
            Transport::Tls(s) => s.ready(interest).await,
        }
    }

    /// Reads what is available into the spare capacity of `buf` without waiting: `Ok(0)` is
    /// end of stream, `WouldBlock` means nothing was there.
    pub fn try_read_buf(&mut self, buf: &mut Vec<u8>) -> io::Result<usize> {
        match self {
            Transport::Tcp(s) => read_now(s, buf),
            Transport::Tls(s) => s.try_read_buf(buf),
        }
    }

    /// Writes as much of `bufs` as fits without waiting; `WouldBlock` means nothing did.
    pub fn try_write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Transport::Tcp(s) => s.try_write_vectored(bufs),
            Transport::Tls(s) => s.try_write_vectored(bufs),
        }
    }

    /// Whether bytes the transport made itself (TLS records) wait for the socket: the
    /// connection then waits for writability even with no output of its own.
    pub fn wants_write(&self) -> bool {
        match self {
            Transport::Tcp(_) => false,
            Transport::Tls(s) => s.wants_write(),
        }
    }

    /// Sends what [`Transport::wants_write`] reports, as far as the socket takes it.
    pub fn flush_own(&mut self) -> io::Result<()> {
        match self {
            Transport::Tcp(_) => Ok(()),
            Transport::Tls(s) => s.flush_records(),
        }
    }

    /// The client's address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        match self {
            Transport::Tcp(s) => s.peer_addr(),
            Transport::Tls(s) => s.peer_addr(),
        }
    }

    /// The client's verified certificate (DER), on a TLS connection that has one.
    pub fn peer_certificate(&self) -> Option<&[u8]> {
        match self {
            Transport::Tcp(_) => None,
            Transport::Tls(s) => s.peer_certificate(),
        }
    }

    /// Whether the connection is encrypted (for the management API and logs).
    pub fn is_tls(&self) -> bool {
        matches!(self, Transport::Tls(_))
    }
}

/// Reads like `TcpStream::try_read_buf`, except that a read returning less than it had room
/// for clears the socket's readiness, as tokio's own `poll_read` does. The socket is then
/// drained (a stream socket returns less only when it has no more), so the next wait goes
/// straight to the poller instead of trying another read that can only fail with
/// `WouldBlock`. That failed read cost a system call per wake-up, and it ran before the tasks
/// this read had woken (a consumer with a message to write): on the path of every message's
/// latency. No wake-up is lost: readiness is cleared only if no event came after the one
/// this read answered (tokio compares the event's tick).
fn read_now(s: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<usize> {
    use tokio::io::AsyncReadExt;
    // Polled once: ready now, or `WouldBlock`. Were it pending, the noop waker would be
    // registered for reads, harmlessly: the connection waits through `ready`, whose waiters
    // are kept apart from it.
    let mut cx = Context::from_waker(Waker::noop());
    match std::pin::pin!(s.read_buf(buf)).poll(&mut cx) {
        Poll::Ready(read) => read,
        Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
    }
}
