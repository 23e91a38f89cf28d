//! AMQP over TLS, with certificates made in the test (rcgen) and a rustls client: a TLS
//! listener beside the plain one, TLS 1.2 and 1.3, and client certificates checked as
//! RabbitMQ's `ssl_options.verify = verify_peer` / `fail_if_no_peer_cert` do.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use amq_protocol::frame::{AMQPFrame, parse_frame};
use amq_protocol::protocol::{AMQPClass, connection};
use amq_protocol::types::{FieldTable, LongString};
use common::{Broker, encode};
use lepus::config::{Config, TlsOptions};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use serde_json::json;

/// A CA, a server certificate for localhost/127.0.0.1 and a client certificate for `bob`,
/// as PEM files in a fresh directory.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new(name: &str) -> Pki {
        Pki::with_server_expiry(name, None)
    }

    /// The same, with the server certificate valid until New Year of `year` (rcgen's
    /// default is 4096).
    fn with_server_expiry(name: &str, year: Option<i32>) -> Pki {
        let dir = std::env::temp_dir().join(format!("lepus-tls-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "Lepus test CA");
        let ca_key = KeyPair::generate().unwrap();
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let mut server = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        server
            .subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        if let Some(year) = year {
            server.not_after = rcgen::date_time_ymd(year, 1, 1);
        }
        let server_key = KeyPair::generate().unwrap();
        let server_cert = server.signed_by(&server_key, &ca_cert, &ca_key).unwrap();
        let mut client = CertificateParams::new(Vec::<String>::new()).unwrap();
        client.distinguished_name.push(DnType::CommonName, "bob");
        let client_key = KeyPair::generate().unwrap();
        let client_cert = client.signed_by(&client_key, &ca_cert, &ca_key).unwrap();
        for (file, pem) in [
            ("ca.pem", ca_cert.pem()),
            ("server.pem", server_cert.pem()),
            ("server.key", server_key.serialize_pem()),
            ("client.pem", client_cert.pem()),
            ("client.key", client_key.serialize_pem()),
        ] {
            std::fs::write(dir.join(file), pem).unwrap();
        }
        Pki { dir }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn options(&self, verify_peer: bool, fail_if_no_peer_cert: bool) -> TlsOptions {
        TlsOptions {
            cert_file: self.file("server.pem"),
            key_file: self.file("server.key"),
            ca_file: Some(self.file("ca.pem")),
            verify_peer,
            fail_if_no_peer_cert,
        }
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn broker_with_tls(options: TlsOptions) -> (Broker, SocketAddr) {
    let mut config = Config::for_tests();
    config.tls_listen = vec!["127.0.0.1:0".parse().unwrap()];
    config.tls = Some(options);
    let broker = Broker::start_with(config).await;
    let tls = broker.server.as_ref().unwrap().tls_addrs()[0];
    (broker, tls)
}

fn client_config(
    pki: &Pki,
    with_cert: bool,
    version: &'static rustls::SupportedProtocolVersion,
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(pki.file("ca.pem")).unwrap())
        .unwrap();
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(roots);
    let config = if with_cert {
        builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_file(pki.file("client.pem")).unwrap()],
                PrivateKeyDer::from_pem_file(pki.file("client.key")).unwrap(),
            )
            .unwrap()
    } else {
        builder.with_no_client_auth()
    };
    Arc::new(config)
}

/// A blocking AMQP client over TLS: just enough to log in as guest and see connection.open-ok.
struct TlsClient {
    stream: StreamOwned<ClientConnection, TcpStream>,
    buf: Vec<u8>,
}

impl TlsClient {
    fn connect(addr: SocketAddr, config: Arc<ClientConfig>) -> std::io::Result<TlsClient> {
        TlsClient::over(TcpStream::connect(addr)?, config)
    }

    fn over(tcp: TcpStream, config: Arc<ClientConfig>) -> std::io::Result<TlsClient> {
        tcp.set_read_timeout(Some(common::WAIT))?;
        let conn = ClientConnection::new(config, ServerName::try_from("localhost").unwrap())
            .map_err(std::io::Error::other)?;
        Ok(TlsClient {
            stream: StreamOwned::new(conn, tcp),
            buf: Vec::new(),
        })
    }

    fn send(&mut self, method: AMQPClass) -> std::io::Result<()> {
        self.stream
            .write_all(&encode(&AMQPFrame::Method(0, method)))
    }

    fn recv(&mut self) -> std::io::Result<AMQPClass> {
        loop {
            if let Ok((rest, frame)) = parse_frame(&self.buf[..]) {
                let used = self.buf.len() - rest.len();
                self.buf.drain(..used);
                if let AMQPFrame::Method(_, m) = frame {
                    return Ok(m);
                }
                continue;
            }
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// The AMQP handshake as guest; Ok once connection.open-ok arrives.
    fn login(&mut self) -> std::io::Result<()> {
        self.login_with("PLAIN", b"\0guest\0guest").map(|_| ())
    }

    /// The AMQP handshake with this SASL mechanism and response; returns the mechanisms the
    /// broker offered.
    fn login_with(&mut self, mechanism: &str, response: &[u8]) -> std::io::Result<String> {
        self.stream.write_all(b"AMQP\x00\x00\x09\x01")?;
        let AMQPClass::Connection(connection::AMQPMethod::Start(start)) = self.recv()? else {
            panic!("expected connection.start");
        };
        let offered = String::from_utf8_lossy(start.mechanisms.as_bytes()).into_owned();
        self.send(AMQPClass::Connection(connection::AMQPMethod::StartOk(
            connection::StartOk {
                client_properties: FieldTable::default(),
                mechanism: mechanism.into(),
                response: LongString::from(response.to_vec()),
                locale: "en_US".into(),
            },
        )))?;
        let AMQPClass::Connection(connection::AMQPMethod::Tune(tune)) = self.recv()? else {
            panic!("expected connection.tune");
        };
        self.send(AMQPClass::Connection(connection::AMQPMethod::TuneOk(
            connection::TuneOk {
                channel_max: tune.channel_max,
                frame_max: tune.frame_max,
                heartbeat: 0,
            },
        )))?;
        self.send(AMQPClass::Connection(connection::AMQPMethod::Open(
            connection::Open {
                virtual_host: "/".into(),
            },
        )))?;
        match self.recv()? {
            AMQPClass::Connection(connection::AMQPMethod::OpenOk(_)) => Ok(offered),
            other => panic!("expected open-ok, got {other:?}"),
        }
    }
}

impl TlsClient {
    fn send_on(&mut self, channel: u16, method: AMQPClass) -> std::io::Result<()> {
        self.stream
            .write_all(&encode(&AMQPFrame::Method(channel, method)))
    }

    fn recv_frame(&mut self) -> std::io::Result<AMQPFrame> {
        loop {
            if let Ok((rest, frame)) = parse_frame(&self.buf[..]) {
                let used = self.buf.len() - rest.len();
                self.buf.drain(..used);
                return Ok(frame);
            }
            let mut chunk = [0u8; 65536];
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Publishes `body` to a new queue and gets it back, all over TLS.
    fn round_trip(&mut self, body: &[u8]) -> std::io::Result<Vec<u8>> {
        use amq_protocol::protocol::{basic, channel, queue};
        self.send_on(
            1,
            AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
        )?;
        self.recv_frame()?;
        self.send_on(
            1,
            AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
                queue: "tls-q".into(),
                exclusive: true,
                ..Default::default()
            })),
        )?;
        self.recv_frame()?;
        self.send_on(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
                exchange: "".into(),
                routing_key: "tls-q".into(),
                ..Default::default()
            })),
        )?;
        let header = AMQPFrame::Header(
            1,
            amq_protocol::frame::AMQPContentHeader {
                class_id: 60,
                body_size: body.len() as u64,
                properties: Default::default(),
            },
        );
        self.stream.write_all(&encode(&header))?;
        for part in body.chunks(100_000) {
            self.stream
                .write_all(&encode(&AMQPFrame::Body(1, part.to_vec())))?;
        }
        self.send_on(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Get(basic::Get {
                queue: "tls-q".into(),
                no_ack: true,
            })),
        )?;
        let mut got = Vec::new();
        let mut size = None;
        while size != Some(got.len()) {
            match self.recv_frame()? {
                AMQPFrame::Header(_, h) => size = Some(h.body_size as usize),
                AMQPFrame::Body(_, data) => got.extend_from_slice(&data),
                _ => {}
            }
        }
        Ok(got)
    }
}

fn login(addr: SocketAddr, config: Arc<ClientConfig>) -> std::io::Result<()> {
    TlsClient::connect(addr, config)?.login()
}

#[tokio::test(flavor = "multi_thread")]
async fn clients_speak_amqp_over_tls_1_2_and_1_3_beside_the_plain_listener() {
    let pki = Pki::new("plain");
    let (broker, tls) = broker_with_tls(pki.options(false, false)).await;
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let config = client_config(&pki, false, version);
        tokio::task::spawn_blocking(move || login(tls, config))
            .await
            .unwrap()
            .expect("logs in over TLS");
    }
    // A message larger than what the TLS session buffers goes in and comes back whole.
    let config = client_config(&pki, false, &rustls::version::TLS13);
    let body: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let expected = body.clone();
    let got = tokio::task::spawn_blocking(move || {
        let mut client = TlsClient::connect(tls, config)?;
        client.login()?;
        client.round_trip(&body)
    })
    .await
    .unwrap()
    .expect("a 3 MB message round-trips over TLS");
    assert!(got == expected, "the body came back intact");
    // The plain listener still serves.
    let (_c, ch) = broker.channel().await;
    common::within(ch.queue_declare("".into(), Default::default(), FieldTable::default()))
        .await
        .expect("plain AMQP still works");
    // Plain AMQP sent to the TLS port is not a TLS handshake: the connection goes.
    let mut raw = TcpStream::connect(tls).unwrap();
    raw.set_read_timeout(Some(common::WAIT)).unwrap();
    raw.write_all(b"AMQP\x00\x00\x09\x01").unwrap();
    let mut answer = Vec::new();
    let _ = raw.read_to_end(&mut answer);
    assert!(
        !answer.windows(4).any(|w| w == b"AMQP"),
        "no AMQP in clear text"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_peer_with_fail_if_no_peer_cert_refuses_clients_without_a_certificate() {
    let pki = Pki::new("verify");
    let (_broker, tls) = broker_with_tls(pki.options(true, true)).await;
    let with = client_config(&pki, true, &rustls::version::TLS13);
    tokio::task::spawn_blocking(move || login(tls, with))
        .await
        .unwrap()
        .expect("a client with a certificate from the CA logs in");
    let without = client_config(&pki, false, &rustls::version::TLS13);
    let refused = tokio::task::spawn_blocking(move || login(tls, without))
        .await
        .unwrap();
    assert!(
        refused.is_err(),
        "a client without a certificate is refused"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_peer_without_fail_if_no_peer_cert_lets_clients_without_one_in() {
    let pki = Pki::new("optional");
    let (_broker, tls) = broker_with_tls(pki.options(true, false)).await;
    for with_cert in [true, false] {
        let config = client_config(&pki, with_cert, &rustls::version::TLS12);
        tokio::task::spawn_blocking(move || login(tls, config))
            .await
            .unwrap()
            .expect("logs in");
    }
}

#[tokio::test]
async fn a_tls_listener_without_certificates_stops_the_start() {
    let mut config = Config::for_tests();
    config.tls_listen = vec!["127.0.0.1:0".parse().unwrap()];
    config.tls = Some(TlsOptions {
        cert_file: Path::new("/nonexistent/server.pem").to_path_buf(),
        key_file: Path::new("/nonexistent/server.key").to_path_buf(),
        ..TlsOptions::default()
    });
    let err = lepus::Server::start(config).await.err().expect("refused");
    assert!(err.to_string().contains("ssl_options.certfile"), "{err}");
}

async fn broker_with_external(
    pki: &Pki,
    login_from: lepus::config::CertLogin,
) -> (Broker, SocketAddr) {
    let mut config = Config::for_tests();
    config.tls_listen = vec!["127.0.0.1:0".parse().unwrap()];
    config.tls = Some(pki.options(true, false));
    config.auth_mechanisms = vec!["PLAIN".into(), "AMQPLAIN".into(), "EXTERNAL".into()];
    config.ssl_cert_login_from = login_from;
    let broker = Broker::start_with(config).await;
    let tls = broker.server.as_ref().unwrap().tls_addrs()[0];
    (broker, tls)
}

fn external(tls: SocketAddr, config: Arc<ClientConfig>) -> std::io::Result<String> {
    TlsClient::connect(tls, config)?.login_with("EXTERNAL", b"")
}

#[tokio::test(flavor = "multi_thread")]
async fn same_as_rabbitmq_external_logs_in_as_the_certificate_subject() {
    let pki = Pki::new("external-dn");
    let (broker, tls) =
        broker_with_external(&pki, lepus::config::CertLogin::DistinguishedName).await;
    let admin = broker.server.as_ref().unwrap().broker().clone();
    // The client certificate's subject is CN=bob: that is the user, and it must exist.
    let with = client_config(&pki, true, &rustls::version::TLS13);
    let c = with.clone();
    let refused = tokio::task::spawn_blocking(move || external(tls, c))
        .await
        .unwrap();
    assert!(refused.is_err(), "no user CN=bob yet");
    admin.add_user("CN=bob", "unused-password").unwrap();
    admin
        .set_permissions("CN=bob", "/", ".*", ".*", ".*")
        .unwrap();
    let offered = tokio::task::spawn_blocking(move || external(tls, with))
        .await
        .unwrap()
        .expect("EXTERNAL logs in as CN=bob");
    assert_eq!(offered, "AMQPLAIN EXTERNAL PLAIN");
    // Same as RabbitMQ: without a certificate EXTERNAL is still offered on TLS (choosing it
    // is then a refused login, a clearer error than a missing mechanism), and not accepted.
    let without = client_config(&pki, false, &rustls::version::TLS13);
    let offered = {
        let c = without.clone();
        tokio::task::spawn_blocking(move || {
            let mut client = TlsClient::connect(tls, c)?;
            client.login_with("PLAIN", b"\0guest\0guest")
        })
        .await
        .unwrap()
        .expect("PLAIN still works")
    };
    assert_eq!(offered, "AMQPLAIN EXTERNAL PLAIN");
    let refused = tokio::task::spawn_blocking(move || external(tls, without))
        .await
        .unwrap();
    assert!(refused.is_err());
    // Nor on the plain listener.
    let mut raw = broker.raw().await;
    raw.send(b"AMQP\x00\x00\x09\x01").await;
    let (_, start) = raw.recv_method().await.expect("start");
    let AMQPClass::Connection(connection::AMQPMethod::Start(start)) = start else {
        panic!("expected connection.start");
    };
    assert_eq!(start.mechanisms.as_bytes(), b"AMQPLAIN PLAIN");
}

#[tokio::test(flavor = "multi_thread")]
async fn ssl_cert_login_from_common_name_uses_the_cn() {
    let pki = Pki::new("external-cn");
    let (broker, tls) = broker_with_external(&pki, lepus::config::CertLogin::CommonName).await;
    let admin = broker.server.as_ref().unwrap().broker().clone();
    admin.add_user("bob", "unused-password").unwrap();
    admin.set_permissions("bob", "/", ".*", ".*", ".*").unwrap();
    let with = client_config(&pki, true, &rustls::version::TLS12);
    tokio::task::spawn_blocking(move || external(tls, with))
        .await
        .unwrap()
        .expect("EXTERNAL logs in as bob");
}

/// Same as RabbitMQ: a client that closes its connection while deliveries are still on their
/// way gets them all, then Close-Ok. Over TLS the last of them can sit in the session's
/// records after the connection's own output has emptied; they used to be dropped with the
/// socket, Close-Ok among them, when the last write filled the socket. (Loopback's socket
/// buffers are large, so this test rarely catches that moment; it checks the path.)
#[tokio::test(flavor = "multi_thread")]
async fn a_connection_closed_over_tls_sends_everything_before_it_goes() {
    use amq_protocol::protocol::{basic, channel};
    let pki = Pki::new("close");
    let (broker, tls) = broker_with_tls(pki.options(false, false)).await;
    let (_c, ch) = broker.channel().await;
    common::within(ch.queue_declare("backlog".into(), Default::default(), FieldTable::default()))
        .await
        .unwrap();
    const MESSAGES: usize = 128;
    let body = vec![7u8; 64 * 1024];
    for _ in 0..MESSAGES {
        common::within(ch.basic_publish(
            "".into(),
            "backlog".into(),
            Default::default(),
            &body,
            Default::default(),
        ))
        .await
        .unwrap();
    }
    assert_eq!(common::message_count(&ch, "backlog").await, MESSAGES as u32);
    let config = client_config(&pki, false, &rustls::version::TLS13);
    // A small receive window keeps the broker's send buffer small: it fills at every write.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = common::within(socket.connect(tls))
        .await
        .unwrap()
        .into_std()
        .unwrap();
    tcp.set_nonblocking(false).unwrap();
    let (bodies, closed) = tokio::task::spawn_blocking(move || {
        let mut client = TlsClient::over(tcp, config)?;
        client.login()?;
        client.send_on(
            1,
            AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
        )?;
        client.send_on(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
                queue: "backlog".into(),
                no_ack: true,
                ..Default::default()
            })),
        )?;
        // Deliveries fill the socket and the session while the client reads nothing; then
        // it closes, and reads what comes, slowly, until the socket closes.
        std::thread::sleep(std::time::Duration::from_millis(300));
        client.send(AMQPClass::Connection(connection::AMQPMethod::Close(
            connection::Close {
                reply_code: 200,
                reply_text: "bye".into(),
                class_id: 0,
                method_id: 0,
            },
        )))?;
        let mut bodies = 0;
        loop {
            match client.recv_frame() {
                Ok(AMQPFrame::Body(..)) => {
                    // A slow reader: the socket is full whenever the broker writes.
                    bodies += 1;
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
                Ok(AMQPFrame::Method(
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::CloseOk(_)),
                )) => {
                    return Ok::<_, std::io::Error>((bodies, true));
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    return Ok((bodies, false));
                }
                Err(e) => return Err(e),
            }
        }
    })
    .await
    .unwrap()
    .expect("the client reads until the socket closes");
    assert!(closed, "Close-Ok arrived (after {bodies} bodies)");
}

/// Same as RabbitMQ's `/api/health/checks/certificate-expiration/{within}/{unit}`: 200 while
/// the TLS listeners' certificates outlive the window, 503 naming the listener and the
/// expiry dates when one does not, 400 for a window it cannot read.
#[tokio::test]
async fn same_as_rabbitmq_the_certificate_expiration_check_names_what_expires_within_the_window() {
    let pki = Pki::with_server_expiry("expiry", Some(2040));
    let mut config = Config::for_tests();
    config.tls_listen = vec!["127.0.0.1:0".parse().unwrap()];
    config.tls = Some(pki.options(false, false));
    config.management_listen = Some("127.0.0.1:0".parse().unwrap());
    let broker = Broker::start_with(config).await;
    let server = broker.server.as_ref().unwrap();
    let tls = server.tls_addrs()[0];
    let api = common::http::Api::new(server.management_addr().unwrap(), "guest", "guest");
    let check = |window: &str| {
        let path = format!("/api/health/checks/certificate-expiration/{window}");
        let api = api.clone();
        async move { api.get(&path).await }
    };
    let fine = check("1/years").await;
    assert_eq!((fine.status, fine.json()), (200, json!({"status": "ok"})));
    let soon = check("20/YEARS").await;
    assert_eq!(soon.status, 503);
    let body = soon.json();
    assert_eq!(body["status"], "failed");
    assert_eq!(body["reason"], "Certificates expiring");
    let listener = &body["expired"][0];
    assert_eq!(listener["protocol"], "amqp/ssl");
    assert_eq!(listener["port"], tls.port());
    assert_eq!(
        listener["certfile_expires_on"],
        json!(["2040-01-01 0:00:00"])
    );
    // The CA's certificate outlives the window.
    assert_eq!(listener["cacertfile_expires_on"], json!([]));
    let bad = check("soon/days").await;
    assert_eq!(
        (bad.status, bad.json()["reason"].clone()),
        (400, json!("Invalid expiration value."))
    );
    let bad = check("3/fortnights").await;
    assert_eq!(
        (bad.status, bad.json()["reason"].clone()),
        (
            400,
            json!("Time unit not recognised. Supported units: days, weeks, months, years.")
        )
    );
}
