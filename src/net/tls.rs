//! TLS over a TCP socket, with rustls driven by readiness: the connection task's three
//! operations (wait until ready, read what is there, write what fits) work the same over TLS,
//! so the AMQP hot path is written once.
//!
//! rustls is used without an async wrapper: encrypted bytes move between the socket and the
//! rustls session only when the socket is ready, and plaintext moves between the session and
//! the connection's buffers. The session buffers at most `TLS_BUFFER_BYTES` of plaintext to
//! send: past that, writes report `WouldBlock` until the socket has taken the records, as a
//! full socket would.

use std::io::{self, IoSlice, Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, ServerConnection};
use tokio::io::{Interest, Ready};
use tokio::net::TcpStream;

use crate::config::TlsOptions;

/// Plaintext a session holds for sending before writes wait for the socket.
const TLS_BUFFER_BYTES: usize = 256 * 1024;

/// Builds the rustls configuration: TLS 1.2 and 1.3, the certificate and key, and client
/// certificates as the options say.
pub fn server_config(o: &TlsOptions) -> io::Result<Arc<ServerConfig>> {
    let invalid = |what: &str, path: &Path, e: &dyn std::fmt::Display| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{what} {}: {e}", path.display()),
        )
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&o.cert_file)
        .map_err(|e| invalid("ssl_options.certfile", &o.cert_file, &e))?
        .collect::<Result<_, _>>()
        .map_err(|e| invalid("ssl_options.certfile", &o.cert_file, &e))?;
    let key = PrivateKeyDer::from_pem_file(&o.key_file)
        .map_err(|e| invalid("ssl_options.keyfile", &o.key_file, &e))?;
    // rustls 0.23.48 deprecates the ring provider for its lack of post-quantum key
    // exchange (the fuzz crate, with no lock file of its own, already builds with it). Kept:
    // the alternative, aws-lc-rs, is a C and CMake build, and RabbitMQ 3.10's TLS offers no
    // post-quantum groups either.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?;
    let builder = if o.verify_peer {
        let ca = o.ca_file.as_ref().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "ssl_options.verify = verify_peer needs ssl_options.cacertfile",
            )
        })?;
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca)
            .map_err(|e| invalid("ssl_options.cacertfile", ca, &e))?
        {
            let cert = cert.map_err(|e| invalid("ssl_options.cacertfile", ca, &e))?;
            roots
                .add(cert)
                .map_err(|e| invalid("ssl_options.cacertfile", ca, &e))?;
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
        let verifier = if o.fail_if_no_peer_cert {
            verifier
        } else {
            verifier.allow_unauthenticated()
        };
        builder.with_client_cert_verifier(verifier.build().map_err(io::Error::other)?)
    } else {
        builder.with_no_client_auth()
    };
    let config = builder
        .with_single_cert(certs, key)
        .map_err(|e| invalid("ssl_options.certfile/keyfile", &o.cert_file, &e))?;
    Ok(Arc::new(config))
}

/// A TLS session over an accepted socket. The handshake happens as the connection task
/// reads and writes.
pub struct TlsStream {
    tcp: TcpStream,
    session: ServerConnection,
    /// Decrypted bytes are waiting: the next wait for readability returns at once.
    plaintext_waiting: bool,
    /// The peer closed (or the socket did): reads return 0 once the plaintext is read.
    closed: bool,
}

impl std::fmt::Debug for TlsStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsStream")
            .field("peer", &self.tcp.peer_addr().ok())
            .finish()
    }
}

/// The socket as the blocking `Read`/`Write` rustls moves records through; `WouldBlock`
/// when it is not ready.
struct Socket<'a>(&'a TcpStream);

impl Read for Socket<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.try_read(buf)
    }
}

impl Write for Socket<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.0.try_write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl TlsStream {
    pub fn new(tcp: TcpStream, config: Arc<ServerConfig>) -> io::Result<TlsStream> {
        let mut session = ServerConnection::new(config).map_err(io::Error::other)?;
        session.set_buffer_limit(Some(TLS_BUFFER_BYTES));
        Ok(TlsStream {
            tcp,
            session,
            plaintext_waiting: false,
            closed: false,
        })
    }

    pub async fn ready(&self, interest: Interest) -> io::Result<Ready> {
        if interest.is_readable() && (self.plaintext_waiting || self.closed) {
            return Ok(Ready::READABLE);
        }
        // Records waiting to go out (handshake messages, or what a write left) need the
        // socket writable even when the caller has nothing of its own to send.
        let interest = if self.session.wants_write() {
            interest | Interest::WRITABLE
        } else {
            interest
        };
        self.tcp.ready(interest).await
    }

    /// Whether records are waiting for the socket.
    pub fn wants_write(&self) -> bool {
        self.session.wants_write()
    }

    /// Sends waiting records until the socket is full.
    pub fn flush_records(&mut self) -> io::Result<()> {
        while self.session.wants_write() {
            match self.session.write_tls(&mut Socket(&self.tcp)) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    pub fn try_read_buf(&mut self, buf: &mut Vec<u8>) -> io::Result<usize> {
        loop {
            let state = self.session.process_new_packets().map_err(|e| {
                // Tell the peer why (an alert), as far as the socket takes it.
                let _ = self.flush_records();
                io::Error::new(io::ErrorKind::InvalidData, e)
            })?;
            let waiting = state.plaintext_bytes_to_read();
            let room = buf.capacity() - buf.len();
            if waiting > 0 && room > 0 {
                // Only the bytes about to be overwritten are zeroed.
                let n = waiting.min(room);
                let start = buf.len();
                buf.resize(start + n, 0);
                self.session.reader().read_exact(&mut buf[start..])?;
                self.plaintext_waiting = waiting > n;
                return Ok(n);
            }
            if waiting > 0 {
                // No room: nothing more is read from the socket (so the session's plaintext
                // cannot grow) until the caller has made some.
                self.plaintext_waiting = true;
                return Err(io::ErrorKind::WouldBlock.into());
            }
            self.plaintext_waiting = false;
            if state.peer_has_closed() || self.closed {
                self.closed = true;
                return Ok(0);
            }
            // Handshake replies go out as soon as they are made.
            self.flush_records()?;
            match self.session.read_tls(&mut Socket(&self.tcp)) {
                Ok(0) => {
                    self.closed = true;
                    return Ok(0);
                }
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
    }

    pub fn try_write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.flush_records()?;
        if self.session.wants_write() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let written = self.session.writer().write_vectored(bufs)?;
        if written == 0 && bufs.iter().any(|b| !b.is_empty()) {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.flush_records()?;
        Ok(written)
    }

    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.tcp.peer_addr()
    }

    /// The client's certificate (DER), once the handshake verified it.
    pub fn peer_certificate(&self) -> Option<&[u8]> {
        self.session
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|c| c.as_ref())
    }
}
