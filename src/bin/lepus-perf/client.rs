//! A raw AMQP client for load generation: it speaks just enough protocol to set up a
//! scenario, then writes precomputed frames in large batches and parses deliveries in place,
//! so that it costs the broker under test far more than it costs itself.

use std::io;
use std::sync::{Arc, OnceLock};

use amq_protocol::protocol::{AMQPClass, basic, channel, confirm, connection, exchange, queue};
use amq_protocol::types::{FieldTable, LongString};
use lepus::protocol::frame::{FRAME_METHOD, FrameHeader, peek_frame};
use lepus::protocol::method::{parse_method, write_method};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

/// A connection's byte stream: TCP, or TLS over it.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
pub type Stream = Box<dyn Io>;

/// TLS for every connection, when `--tls-ca` names the CA that signed the broker's
/// certificate (issued for `localhost`).
static TLS: OnceLock<Arc<ClientConfig>> = OnceLock::new();

/// Makes every later connection speak TLS, trusting the CA in `ca_file`.
pub fn use_tls(ca_file: &str) -> io::Result<()> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_file).map_err(io::Error::other)? {
        roots
            .add(cert.map_err(io::Error::other)?)
            .map_err(io::Error::other)?;
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let _ = TLS.set(Arc::new(config));
    Ok(())
}

/// Connects to `addr`, over TLS if `use_tls` was called.
pub async fn connect_stream(addr: &str) -> io::Result<Stream> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    match TLS.get() {
        None => Ok(Box::new(tcp)),
        Some(config) => {
            let name = ServerName::try_from("localhost").map_err(io::Error::other)?;
            let tls = TlsConnector::from(config.clone())
                .connect(name, tcp)
                .await?;
            Ok(Box::new(tls))
        }
    }
}

/// Frames up to this size are asked for in Tune-Ok.
pub const FRAME_MAX: u32 = 131_072;

pub struct Client {
    pub stream: Stream,
    /// Bytes read and not yet parsed.
    buf: Vec<u8>,
    /// Where unparsed bytes start in `buf`.
    start: usize,
}

fn other(msg: impl Into<String>) -> io::Error {
    io::Error::other(msg.into())
}

impl Client {
    pub async fn connect(addr: &str, user: &str, password: &str) -> io::Result<Client> {
        let stream = connect_stream(addr).await?;
        let mut c = Client {
            stream,
            buf: Vec::with_capacity(1 << 20),
            start: 0,
        };
        c.stream.write_all(b"AMQP\x00\x00\x09\x01").await?;
        c.expect(0, |m| {
            matches!(m, AMQPClass::Connection(connection::AMQPMethod::Start(_)))
        })
        .await?;
        let response = format!("\0{user}\0{password}");
        c.send_method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
                client_properties: FieldTable::default(),
                mechanism: "PLAIN".into(),
                response: LongString::from(response.into_bytes()),
                locale: "en_US".into(),
            })),
        )
        .await?;
        let tune = c
            .expect(0, |m| {
                matches!(m, AMQPClass::Connection(connection::AMQPMethod::Tune(_)))
            })
            .await?;
        let AMQPClass::Connection(connection::AMQPMethod::Tune(tune)) = tune else {
            return Err(other("expected tune"));
        };
        c.send_method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
                channel_max: tune.channel_max,
                frame_max: FRAME_MAX.min(tune.frame_max),
                heartbeat: 0,
            })),
        )
        .await?;
        c.send_method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
                virtual_host: "/".into(),
            })),
        )
        .await?;
        c.expect(0, |m| {
            matches!(m, AMQPClass::Connection(connection::AMQPMethod::OpenOk(_)))
        })
        .await?;
        c.send_method(
            1,
            AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
        )
        .await?;
        c.expect(1, |m| {
            matches!(m, AMQPClass::Channel(channel::AMQPMethod::OpenOk(_)))
        })
        .await?;
        Ok(c)
    }

    pub async fn send_method(&mut self, channel: u16, method: AMQPClass) -> io::Result<()> {
        let mut out = Vec::new();
        write_method(&mut out, channel, &method);
        self.stream.write_all(&out).await
    }

    /// Reads more bytes into the buffer; errors on EOF.
    pub async fn fill(&mut self) -> io::Result<()> {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > self.buf.capacity() / 2 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        if self.buf.capacity() - self.buf.len() < 65536 {
            self.buf.reserve(1 << 20);
        }
        let n = self.stream.read_buf(&mut self.buf).await?;
        if n == 0 {
            return Err(other("broker closed the connection"));
        }
        Ok(())
    }

    /// Calls `f` with every complete frame buffered so far (header and payload, in place).
    pub fn frames(&mut self, mut f: impl FnMut(FrameHeader, &[u8])) -> io::Result<()> {
        loop {
            let rest = &self.buf[self.start..];
            let header = match peek_frame(rest, 0) {
                Ok(Some(h)) => h,
                Ok(None) => return Ok(()),
                Err(e) => return Err(other(e.text)),
            };
            let total = header.total_len();
            if rest.len() < total {
                return Ok(());
            }
            f(header, &rest[7..7 + header.size as usize]);
            self.start += total;
        }
    }

    /// Waits for a method on `channel` that `want` accepts; a Close is an error.
    pub async fn expect(
        &mut self,
        channel: u16,
        want: impl Fn(&AMQPClass) -> bool,
    ) -> io::Result<AMQPClass> {
        loop {
            let mut found = None;
            let mut failure = None;
            let start_before = self.start;
            let mut consumed = start_before;
            let buf = &self.buf;
            let mut at = start_before;
            while let Ok(Some(h)) = peek_frame(&buf[at..], 0) {
                let total = h.total_len();
                if buf.len() - at < total {
                    break;
                }
                let payload = &buf[at + 7..at + 7 + h.size as usize];
                at += total;
                consumed = at;
                if h.kind != FRAME_METHOD {
                    continue;
                }
                if let Ok(m) = parse_method(payload) {
                    if matches!(
                        m,
                        AMQPClass::Connection(connection::AMQPMethod::Close(_))
                            | AMQPClass::Channel(channel::AMQPMethod::Close(_))
                    ) {
                        failure = Some(format!("broker closed: {m:?}"));
                        break;
                    }
                    if h.channel == channel && want(&m) {
                        found = Some(m);
                        break;
                    }
                }
            }
            self.start = consumed;
            if let Some(f) = failure {
                return Err(other(f));
            }
            if let Some(m) = found {
                return Ok(m);
            }
            self.fill().await?;
        }
    }

    pub async fn declare_queue(&mut self, name: &str, durable: bool) -> io::Result<()> {
        self.send_method(
            1,
            AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
                queue: name.into(),
                passive: false,
                durable,
                exclusive: false,
                auto_delete: false,
                nowait: false,
                arguments: FieldTable::default(),
            })),
        )
        .await?;
        self.expect(1, |m| {
            matches!(m, AMQPClass::Queue(queue::AMQPMethod::DeclareOk(_)))
        })
        .await?;
        Ok(())
    }

    /// Messages ready in a queue, from a passive declare.
    pub async fn queue_depth(&mut self, name: &str) -> io::Result<u32> {
        self.send_method(
            1,
            AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
                queue: name.into(),
                passive: true,
                durable: false,
                exclusive: false,
                auto_delete: false,
                nowait: false,
                arguments: FieldTable::default(),
            })),
        )
        .await?;
        match self
            .expect(1, |m| {
                matches!(m, AMQPClass::Queue(queue::AMQPMethod::DeclareOk(_)))
            })
            .await?
        {
            AMQPClass::Queue(queue::AMQPMethod::DeclareOk(ok)) => Ok(ok.message_count),
            _ => Err(other("expected queue.declare-ok")),
        }
    }

    pub async fn purge(&mut self, name: &str) -> io::Result<()> {
        self.send_method(
            1,
            AMQPClass::Queue(queue::AMQPMethod::Purge(queue::Purge {
                queue: name.into(),
                nowait: false,
            })),
        )
        .await?;
        self.expect(1, |m| {
            matches!(m, AMQPClass::Queue(queue::AMQPMethod::PurgeOk(_)))
        })
        .await?;
        Ok(())
    }

    pub async fn delete_queue(&mut self, name: &str) -> io::Result<()> {
        self.send_method(
            1,
            AMQPClass::Queue(queue::AMQPMethod::Delete(queue::Delete {
                queue: name.into(),
                if_unused: false,
                if_empty: false,
                nowait: false,
            })),
        )
        .await?;
        self.expect(1, |m| {
            matches!(m, AMQPClass::Queue(queue::AMQPMethod::DeleteOk(_)))
        })
        .await?;
        Ok(())
    }

    pub async fn declare_exchange(&mut self, name: &str, kind: &str) -> io::Result<()> {
        self.send_method(
            1,
            AMQPClass::Exchange(exchange::AMQPMethod::Declare(exchange::Declare {
                exchange: name.into(),
                kind: kind.into(),
                passive: false,
                durable: false,
                auto_delete: false,
                internal: false,
                nowait: false,
                arguments: FieldTable::default(),
            })),
        )
        .await?;
        self.expect(1, |m| {
            matches!(m, AMQPClass::Exchange(exchange::AMQPMethod::DeclareOk(_)))
        })
        .await?;
        Ok(())
    }

    pub async fn bind(&mut self, queue: &str, exchange: &str, key: &str) -> io::Result<()> {
        self.send_method(
            1,
            AMQPClass::Queue(queue::AMQPMethod::Bind(queue::Bind {
                queue: queue.into(),
                exchange: exchange.into(),
                routing_key: key.into(),
                nowait: false,
                arguments: FieldTable::default(),
            })),
        )
        .await?;
        self.expect(1, |m| {
            matches!(m, AMQPClass::Queue(queue::AMQPMethod::BindOk(_)))
        })
        .await?;
        Ok(())
    }

    pub async fn qos(&mut self, prefetch: u16) -> io::Result<()> {
        self.send_method(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
                prefetch_count: prefetch,
                global: false,
            })),
        )
        .await?;
        self.expect(1, |m| {
            matches!(m, AMQPClass::Basic(basic::AMQPMethod::QosOk(_)))
        })
        .await?;
        Ok(())
    }

    pub async fn consume(&mut self, queue: &str, no_ack: bool) -> io::Result<()> {
        self.send_method(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
                queue: queue.into(),
                consumer_tag: "".into(),
                no_local: false,
                no_ack,
                exclusive: false,
                nowait: false,
                arguments: FieldTable::default(),
            })),
        )
        .await?;
        self.expect(1, |m| {
            matches!(m, AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(_)))
        })
        .await?;
        Ok(())
    }

    pub async fn confirm_select(&mut self) -> io::Result<()> {
        self.send_method(
            1,
            AMQPClass::Confirm(confirm::AMQPMethod::Select(confirm::Select {
                nowait: false,
            })),
        )
        .await?;
        self.expect(1, |m| {
            matches!(m, AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(_)))
        })
        .await?;
        Ok(())
    }
}

/// Appends one publish (method, header and body frames) to `out`.
pub fn publish_frames(
    out: &mut Vec<u8>,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    persistent: bool,
) {
    use lepus::protocol::frame::FrameWriter;
    let start = out.begin_frame(FRAME_METHOD, 1);
    out.extend_from_slice(&[0, 60, 0, 40, 0, 0]);
    out.push(exchange.len() as u8);
    out.extend_from_slice(exchange.as_bytes());
    out.push(routing_key.len() as u8);
    out.extend_from_slice(routing_key.as_bytes());
    out.push(0);
    out.end_frame(start);
    // Properties: delivery-mode only when persistent.
    let props: &[u8] = if persistent {
        &[0x10, 0x00, 2]
    } else {
        &[0, 0]
    };
    lepus::protocol::basic::write_content(out, 1, props, body, FRAME_MAX);
}

/// Appends a basic.ack from the client.
pub fn ack_frame(out: &mut Vec<u8>, tag: u64, multiple: bool) {
    use lepus::protocol::frame::FrameWriter;
    let start = out.begin_frame(FRAME_METHOD, 1);
    out.extend_from_slice(&[0, 60, 0, 80]);
    out.extend_from_slice(&tag.to_be_bytes());
    out.push(multiple as u8);
    out.end_frame(start);
}

/// The delivery tag of a basic.deliver payload, read in place.
pub fn deliver_tag(payload: &[u8]) -> Option<u64> {
    if payload.get(0..4)? != [0, 60, 0, 60] {
        return None;
    }
    let tag_len = *payload.get(4)? as usize;
    let at = 5 + tag_len;
    let bytes = payload.get(at..at + 8)?;
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}
