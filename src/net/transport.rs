//! The byte stream under a connection.
//!
//! The connection task works by readiness: it waits until the transport is readable or
//! writable, then reads or writes as much as it can without blocking, in batches. Those three
//! operations are all it needs, so they are all a transport offers.

use std::io::{self, IoSlice};
use std::net::SocketAddr;

use bytes::BufMut;
use tokio::io::{Interest, Ready};
use tokio::net::TcpStream;

/// A client connection's byte stream.
#[derive(Debug)]
pub enum Transport {
    Tcp(TcpStream),
}

impl Transport {
    /// Waits until the transport is ready for any of `interest`.
    pub async fn ready(&self, interest: Interest) -> io::Result<Ready> {
        match self {
            Transport::Tcp(s) => s.ready(interest).await,
        }
    }

    /// Reads what is available into the spare capacity of `buf` without waiting: `Ok(0)` is
    /// end of stream, `WouldBlock` means nothing was there.
    pub fn try_read_buf<B: BufMut>(&mut self, buf: &mut B) -> io::Result<usize> {
        match self {
            Transport::Tcp(s) => s.try_read_buf(buf),
        }
    }

    /// Writes as much of `bufs` as fits without waiting; `WouldBlock` means nothing did.
    pub fn try_write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Transport::Tcp(s) => s.try_write_vectored(bufs),
        }
    }

    /// The client's address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        match self {
            Transport::Tcp(s) => s.peer_addr(),
        }
    }
}
