//! A client connection: one task that owns the socket, reads and parses frames in place,
//! runs them against its channels, drains deliveries from its outbox and writes everything
//! back in batches.
//!
//! The task loops over: parse every complete frame in the read buffer; drain the outbox into
//! the output; flush confirms; write as much as the socket takes; then wait until the socket
//! is readable (or writable, when output is pending), the outbox has something, or a timer
//! (heartbeat, handshake, close) is due.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use amq_protocol::protocol::{AMQPClass, basic as amqp_basic, connection as amqp_connection};
use amq_protocol::types::{AMQPValue, FieldTable, LongString, ShortString};
use bytes::{Buf, Bytes, BytesMut};
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::amqp_error;
use crate::auth::{self, MECHANISMS};
use crate::broker::Broker;
use crate::channel::{After, Channel};
use crate::config::MIN_FRAME_MAX_BYTES;
use crate::error::AmqpError;
use crate::outbox::{Delivery, Drained, Outbox, OutboxEvent};
use crate::output::{Output, iovecs};
use crate::protocol::basic as hot;
use crate::protocol::frame::{
    FRAME_BODY, FRAME_HEADER, FRAME_HEARTBEAT, FRAME_METHOD, FrameHeader, PROTOCOL_HEADER,
    check_frame_end, erlang_numeric_binary, octets_description, peek_frame, write_heartbeat,
};
use crate::protocol::method::{MethodError, method_ids, parse_method, write_method};
use crate::queue::{Queue, Unblock};
use crate::session::{ClientCapabilities, Session};

/// How long RabbitMQ waits before dropping a connection whose handshake failed.
const HANDSHAKE_FAILURE_DELAY: Duration = Duration::from_secs(3);
/// How long to wait for Close-Ok after sending Connection.Close, at most.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the 8-byte protocol header.
    Header,
    /// Connection.Start sent.
    StartOk,
    /// Connection.Tune sent.
    TuneOk,
    /// Tuned; waiting for Connection.Open.
    Open,
    Running,
    /// Connection.Close sent; only Close and Close-Ok on channel 0 matter until the deadline.
    /// `fatal` closes are not answered: the socket goes at the deadline whatever arrives.
    Closing {
        deadline: Instant,
        fatal: bool,
    },
    /// Send nothing more and close the socket at `at`, as RabbitMQ does after a failed
    /// handshake.
    Dropping {
        at: Instant,
    },
    /// Write what is queued, then close; give up on a client that does not read by the
    /// deadline.
    Finished {
        deadline: Instant,
    },
}

/// Why the connection task stopped.
#[derive(Debug)]
enum Exit {
    /// The connection ended the normal way (close handshake or dropped on purpose).
    Done(&'static str),
    Io(std::io::Error),
}

impl From<std::io::Error> for Exit {
    fn from(e: std::io::Error) -> Self {
        Exit::Io(e)
    }
}

/// A client connection and everything it owns.
pub struct Connection {
    broker: Arc<Broker>,
    stream: TcpStream,
    peer: SocketAddr,
    id: u64,
    outbox: Arc<Outbox>,
    phase: Phase,
    /// Bytes read from the socket and not yet parsed.
    rbuf: BytesMut,
    out: Output,
    /// Largest frame accepted from the client: 4096 until Tune-Ok, then the negotiated value.
    frame_max: u32,
    channel_max: u16,
    /// Negotiated heartbeat in seconds; 0 disables heartbeats.
    heartbeat_s: u16,
    last_recv: Instant,
    last_send: Instant,
    accepted_at: Instant,
    capabilities: ClientCapabilities,
    user: Option<Arc<auth::User>>,
    /// Client name for logs (`connection_name` client property).
    client_name: String,
    session: Option<Session>,
    /// Open channels, sorted by id.
    channels: Vec<Channel>,
    /// Reused buffers for draining the outbox.
    drained: Drained,
    /// Bytes of deliveries encoded into `out` since it was last empty.
    unflushed_delivery_bytes: usize,
    /// Changes when the store syncs: wakes the task to send held confirms and replies.
    synced: tokio::sync::watch::Receiver<u64>,
}

/// Serves one client connection until it closes.
pub async fn serve(broker: Arc<Broker>, stream: TcpStream, peer: SocketAddr, outbox: Arc<Outbox>) {
    let _ = stream.set_nodelay(true);
    let now = Instant::now();
    let synced = broker.store.shared.subscribe();
    let mut conn = Connection {
        synced,
        frame_max: MIN_FRAME_MAX_BYTES,
        channel_max: broker.config.limits.channel_max,
        heartbeat_s: 0,
        broker,
        stream,
        peer,
        id: outbox.connection_id,
        outbox,
        phase: Phase::Header,
        rbuf: BytesMut::new(),
        out: Output::default(),
        last_recv: now,
        last_send: now,
        accepted_at: now,
        capabilities: ClientCapabilities::default(),
        user: None,
        client_name: String::new(),
        session: None,
        channels: Vec::new(),
        drained: Drained::default(),
        unflushed_delivery_bytes: 0,
    };
    let exit = conn.run().await;
    conn.cleanup(exit);
}

impl Connection {
    async fn run(&mut self) -> Exit {
        loop {
            if let Err(exit) = self.step() {
                return exit;
            }
            if let Err(e) = self.flush() {
                return Exit::Io(e);
            }
            if matches!(self.phase, Phase::Finished { .. }) && self.out.is_empty() {
                return Exit::Done("closed");
            }
            if let Err(exit) = self.wait().await {
                return exit;
            }
        }
    }

    /// Does all the work that needs no waiting.
    fn step(&mut self) -> Result<(), Exit> {
        self.process_input();
        if matches!(
            self.phase,
            Phase::Running | Phase::Closing { .. } | Phase::Finished { .. }
        ) {
            self.drain_outbox();
        }
        let synced = self.broker.store.shared.synced();
        self.out.release_holds(synced);
        for ch in &mut self.channels {
            ch.flush_confirms(&mut self.out, synced);
        }
        Ok(())
    }

    /// Whether something waits for the store to sync.
    fn waiting_for_sync(&self) -> bool {
        self.out.has_holds() || self.channels.iter().any(Channel::waiting_for_sync)
    }

    /// Waits for the socket, the outbox or a timer.
    async fn wait(&mut self) -> Result<(), Exit> {
        let now = Instant::now();
        let deadline = self.next_deadline(now);
        if deadline <= now {
            return self.on_timer(now);
        }
        let reading = match self.phase {
            Phase::Dropping { .. } | Phase::Finished { .. } => false,
            Phase::Closing { fatal, .. } => !fatal,
            // Stop reading while a client does not read what we send it.
            _ => self.out.len() < self.output_limit(),
        };
        let writing = self.out.writable_len() > 0;
        let syncing = self.waiting_for_sync();
        let interest = match (reading, writing) {
            (true, true) => Some(Interest::READABLE | Interest::WRITABLE),
            (true, false) => Some(Interest::READABLE),
            (false, true) => Some(Interest::WRITABLE),
            (false, false) => None,
        };
        tokio::select! {
            ready = async {
                match interest {
                    Some(i) => self.stream.ready(i).await,
                    None => std::future::pending().await,
                }
            } => {
                let ready = ready?;
                if ready.is_readable() {
                    self.read()?;
                }
            }
            _ = self.outbox.notified() => {}
            _ = self.synced.changed(), if syncing => {}
            _ = tokio::time::sleep_until(deadline) => {
                return self.on_timer(Instant::now());
            }
        }
        Ok(())
    }

    fn output_limit(&self) -> usize {
        4 * self.broker.config.limits.connection_outbox_bytes
    }

    fn read(&mut self) -> Result<(), Exit> {
        let chunk = self.broker.config.limits.read_chunk_bytes;
        if self.rbuf.capacity() - self.rbuf.len() < chunk / 4 {
            self.rbuf.reserve(chunk);
        }
        match self.stream.try_read_buf(&mut self.rbuf) {
            Ok(0) => Err(Exit::Done("client closed the socket")),
            Ok(_) => {
                self.last_recv = Instant::now();
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(Exit::Io(e)),
        }
    }

    /// Writes as much output as the socket takes without waiting.
    fn flush(&mut self) -> std::io::Result<()> {
        while self.out.writable_len() > 0 {
            let mut iov = iovecs();
            let n = self.out.slices(&mut iov);
            match self.stream.try_write_vectored(&iov[..n]) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(written) => {
                    self.out.consume(written);
                    self.last_send = Instant::now();
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        if self.out.is_empty() {
            self.out.shrink();
            let delivered = std::mem::take(&mut self.unflushed_delivery_bytes);
            if self.outbox.written(delivered) {
                // Queues skipped our consumers while we were full: ask them again.
                for q in self.consumed_queues() {
                    q.kick(Unblock::Connection(&self.outbox));
                }
            }
        }
        Ok(())
    }

    fn consumed_queues(&self) -> Vec<Arc<Queue>> {
        let mut all: Vec<Arc<Queue>> = Vec::new();
        for ch in &self.channels {
            for q in ch.consumed_queues() {
                if !all.iter().any(|x| Arc::ptr_eq(x, &q)) {
                    all.push(q);
                }
            }
        }
        all
    }

    // ---- timers ---------------------------------------------------------------------------

    fn next_deadline(&self, now: Instant) -> Instant {
        let far = now + Duration::from_secs(3600);
        let mut deadline = far;
        match self.phase {
            Phase::Header | Phase::StartOk | Phase::TuneOk | Phase::Open => {
                deadline = deadline.min(
                    self.accepted_at
                        + Duration::from_secs(self.broker.config.limits.handshake_timeout_s),
                );
            }
            Phase::Closing { deadline: d, .. } => deadline = deadline.min(d),
            Phase::Dropping { at } => deadline = deadline.min(at),
            Phase::Finished { deadline: d } => deadline = deadline.min(d),
            Phase::Running => {}
        }
        if self.heartbeat_s > 0 && !matches!(self.phase, Phase::Dropping { .. }) {
            let hb = Duration::from_secs(self.heartbeat_s as u64);
            deadline = deadline.min(self.last_send + hb / 2);
            deadline = deadline.min(self.last_recv + hb * 2);
        }
        for ch in &self.channels {
            if let Some(at) = ch.next_timeout() {
                deadline = deadline.min(Instant::from_std(at));
            }
        }
        deadline
    }

    fn on_timer(&mut self, now: Instant) -> Result<(), Exit> {
        match self.phase {
            Phase::Header | Phase::StartOk | Phase::TuneOk | Phase::Open
                if now
                    >= self.accepted_at
                        + Duration::from_secs(self.broker.config.limits.handshake_timeout_s) =>
            {
                return Err(Exit::Done("handshake timed out"));
            }
            Phase::Closing { deadline, .. } if now >= deadline => {
                return Err(Exit::Done("no close-ok from client"));
            }
            Phase::Dropping { at } if now >= at => {
                return Err(Exit::Done("dropped after a failed handshake"));
            }
            Phase::Finished { deadline } if now >= deadline => {
                return Err(Exit::Done("client stopped reading while being closed"));
            }
            _ => {}
        }
        if self.heartbeat_s > 0 {
            let hb = Duration::from_secs(self.heartbeat_s as u64);
            if now >= self.last_recv + hb * 2 {
                tracing::warn!(
                    peer = %self.peer,
                    timeout_s = self.heartbeat_s,
                    "missed heartbeats from client; closing the connection"
                );
                return Err(Exit::Done("missed heartbeats"));
            }
            if now >= self.last_send + hb / 2 {
                // Output still waiting means the client is not reading: a heartbeat would
                // only queue behind it. Either way the interval starts again now.
                if self.out.is_empty() {
                    write_heartbeat(self.out.buf());
                }
                self.last_send = now;
            }
        }
        self.check_consumer_timeouts(now);
        Ok(())
    }

    /// Closes channels holding a delivery unacknowledged past its consumer timeout.
    fn check_consumer_timeouts(&mut self, now: Instant) {
        if !matches!(self.phase, Phase::Running) {
            return;
        }
        for i in 0..self.channels.len() {
            if !self.channels[i].is_open() {
                continue;
            }
            let Some(e) = self.channels[i].check_timeouts(now.into_std()) else {
                continue;
            };
            let id = self.channels[i].id;
            tracing::warn!(peer = %self.peer, channel = id, text = %e.text, "consumer timed out waiting for delivery acknowledgement");
            if let Some(session) = &self.session {
                self.channels[i].shutdown(session);
            }
            write_channel_close(&mut self.out, id, &e);
        }
    }

    // ---- input ----------------------------------------------------------------------------

    /// Parses and handles every complete frame in the read buffer.
    fn process_input(&mut self) {
        loop {
            match self.phase {
                Phase::Dropping { .. } | Phase::Finished { .. } => {
                    self.rbuf.clear();
                    return;
                }
                Phase::Closing { fatal: true, .. } => {
                    self.rbuf.clear();
                    return;
                }
                Phase::Header => {
                    if self.rbuf.len() < PROTOCOL_HEADER.len() {
                        return;
                    }
                    let header = self.rbuf.split_to(PROTOCOL_HEADER.len());
                    self.on_protocol_header(&header);
                    continue;
                }
                _ => {}
            }
            let header = match peek_frame(&self.rbuf, self.frame_max) {
                Ok(Some(h)) => h,
                Ok(None) => break,
                Err(e) => {
                    self.fail_framing(e);
                    return;
                }
            };
            let total = header.total_len();
            if self.rbuf.len() < total {
                self.rbuf.reserve(total - self.rbuf.len());
                break;
            }
            if let Err(e) = check_frame_end(&self.rbuf, &header) {
                self.fail_framing(e);
                return;
            }
            let mut frame = self.rbuf.split_to(total);
            frame.advance(7);
            frame.truncate(header.size as usize);
            self.on_frame(header, frame.freeze());
        }
        if self.rbuf.is_empty() && self.rbuf.capacity() > 0 {
            // Give the read buffer back between bursts: idle connections hold no buffer.
            self.rbuf = BytesMut::new();
        }
    }

    fn on_protocol_header(&mut self, header: &[u8]) {
        // RabbitMQ also accepts the header of the 0-9 draft and answers it as 0-9-1.
        if header == PROTOCOL_HEADER || header == b"AMQP\x01\x01\x00\x09" {
            self.send_start();
            self.phase = Phase::StartOk;
        } else {
            self.out.buf().extend_from_slice(PROTOCOL_HEADER);
            self.finish();
        }
    }

    /// Moves to Finished: flush what is queued, then close.
    fn finish(&mut self) {
        self.phase = Phase::Finished {
            deadline: Instant::now() + CLOSE_TIMEOUT,
        };
    }

    fn in_handshake(&self) -> bool {
        matches!(self.phase, Phase::StartOk | Phase::TuneOk)
    }

    /// A framing error: before Tune-Ok the connection is dropped silently, afterwards the
    /// client gets a Connection.Close and the socket closes 3 s later whatever it answers.
    fn fail_framing(&mut self, e: AmqpError) {
        if self.in_handshake() {
            self.drop_silently();
        } else {
            self.close_connection(e, true);
        }
    }

    /// RabbitMQ's answer to a failed handshake: nothing, and the socket closed 3 s later.
    fn drop_silently(&mut self) {
        self.phase = Phase::Dropping {
            at: Instant::now() + HANDSHAKE_FAILURE_DELAY,
        };
    }

    fn on_frame(&mut self, header: FrameHeader, payload: Bytes) {
        let result = match header.kind {
            FRAME_HEARTBEAT if payload.is_empty() => {
                if header.channel == 0 {
                    return;
                }
                Err(amqp_error!(
                    UnexpectedFrame,
                    "{}",
                    octets_description(header.kind, &payload)
                ))
            }
            FRAME_METHOD if payload.len() >= 4 => {
                if header.channel == 0 {
                    self.on_connection_method(&payload);
                    return;
                }
                self.on_channel_frame(header, payload)
            }
            FRAME_HEADER if payload.len() >= 12 => {
                if header.channel == 0 {
                    Err(amqp_error!(
                        UnexpectedFrame,
                        "{}",
                        octets_description(header.kind, &payload)
                    ))
                } else {
                    self.on_channel_frame(header, payload)
                }
            }
            FRAME_BODY => {
                if header.channel == 0 {
                    Err(amqp_error!(
                        UnexpectedFrame,
                        "{}",
                        octets_description(header.kind, &payload)
                    ))
                } else {
                    self.on_channel_frame(header, payload)
                }
            }
            kind => Err(amqp_error!(
                FrameError,
                "{}: unknown_frame",
                octets_description(kind, &payload)
            )),
        };
        if let Err(e) = result {
            if self.in_handshake() {
                self.drop_silently();
            } else {
                self.close_connection(e, false);
            }
        }
    }

    // ---- connection methods ---------------------------------------------------------------

    fn on_connection_method(&mut self, payload: &[u8]) {
        let method = match parse_method(payload) {
            Ok(m) => m,
            Err(e) => {
                match self.phase {
                    Phase::StartOk | Phase::TuneOk => self.drop_silently(),
                    Phase::Closing { .. } => {}
                    _ => self.close_connection(method_error(e, payload, true), false),
                }
                return;
            }
        };
        let (class_id, method_id) = (method.get_amqp_class_id(), method.get_amqp_method_id());
        use amqp_connection::AMQPMethod as M;
        match (self.phase, method) {
            (Phase::StartOk, AMQPClass::Connection(M::StartOk(ok))) => self.on_start_ok(ok),
            (Phase::TuneOk, AMQPClass::Connection(M::TuneOk(ok))) => self.on_tune_ok(ok),
            (Phase::StartOk | Phase::TuneOk, _) => self.drop_silently(),
            (Phase::Open, AMQPClass::Connection(M::Open(open))) => self.on_open(open),
            (Phase::Running, AMQPClass::Connection(M::Close(close))) => {
                tracing::debug!(peer = %self.peer, code = close.reply_code, text = %close.reply_text, "client closed the connection");
                self.shutdown_channels();
                write_method(
                    self.out.buf(),
                    0,
                    &AMQPClass::Connection(M::CloseOk(amqp_connection::CloseOk {})),
                );
                self.finish();
            }
            (Phase::Running, AMQPClass::Connection(M::UpdateSecret(_))) => {
                write_method(
                    self.out.buf(),
                    0,
                    &AMQPClass::Connection(M::UpdateSecretOk(amqp_connection::UpdateSecretOk {})),
                );
            }
            (Phase::Closing { fatal, .. }, AMQPClass::Connection(M::Close(_))) => {
                if !fatal {
                    write_method(
                        self.out.buf(),
                        0,
                        &AMQPClass::Connection(M::CloseOk(amqp_connection::CloseOk {})),
                    );
                }
            }
            (Phase::Closing { fatal: false, .. }, AMQPClass::Connection(M::CloseOk(_))) => {
                self.finish();
            }
            (Phase::Closing { .. }, _) => {}
            (phase, _) => {
                let state = if phase == Phase::Open {
                    "opening"
                } else {
                    "running"
                };
                self.close_connection(
                    amqp_error!(
                        ChannelError,
                        "unexpected method in connection state {}",
                        state
                    )
                    .on_method(class_id, method_id),
                    false,
                );
            }
        }
    }

    fn send_start(&mut self) {
        let config = &self.broker.config;
        let mut capabilities = FieldTable::default();
        // Only what Lepus really does. connection.blocked is left out until memory alarms
        // exist: clients that rely on it must not be misled (see LavinMQ #2186).
        for cap in [
            "publisher_confirms",
            "exchange_exchange_bindings",
            "basic.nack",
            "consumer_cancel_notify",
            "consumer_priorities",
            "authentication_failure_close",
            "per_consumer_qos",
            "direct_reply_to",
        ] {
            capabilities.insert(ShortString::from(cap), AMQPValue::Boolean(true));
        }
        let mut props = FieldTable::default();
        let text = |s: &str| AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()));
        props.insert("capabilities".into(), AMQPValue::FieldTable(capabilities));
        props.insert("cluster_name".into(), text(&config.cluster_name));
        props.insert("copyright".into(), text("Copyright (c) the Lepus authors"));
        props.insert(
            "information".into(),
            text("Licensed under the Apache License 2.0. An AMQP 0-9-1 broker compatible with RabbitMQ."),
        );
        props.insert(
            "platform".into(),
            text(concat!("Lepus ", env!("CARGO_PKG_VERSION"), " (Rust)")),
        );
        props.insert("product".into(), text(&config.product));
        props.insert("version".into(), text(&config.version));
        let start = amqp_connection::Start {
            version_major: 0,
            version_minor: 9,
            server_properties: props,
            mechanisms: LongString::from(MECHANISMS.as_bytes().to_vec()),
            locales: LongString::from(b"en_US".to_vec()),
        };
        write_method(
            self.out.buf(),
            0,
            &AMQPClass::Connection(amqp_connection::AMQPMethod::Start(start)),
        );
    }

    fn on_start_ok(&mut self, ok: amqp_connection::StartOk) {
        self.capabilities = ClientCapabilities::from_client_properties(&ok.client_properties);
        if let Some(name) = crate::protocol::table::get(&ok.client_properties, "connection_name")
            .and_then(crate::protocol::table::as_str)
        {
            self.client_name = name.to_owned();
        }
        let mechanism = ok.mechanism.as_str();
        let (name, password) = match auth::parse_response(mechanism, ok.response.as_bytes()) {
            Ok(creds) => creds,
            Err(e) => {
                tracing::warn!(peer = %self.peer, mechanism, error = ?e, "refused login: bad SASL response");
                self.drop_silently();
                return;
            }
        };
        let user = self
            .broker
            .user(&name)
            .filter(|u| u.password_matches(&password) && u.may_connect_from(self.peer.ip()));
        let Some(user) = user else {
            tracing::warn!(peer = %self.peer, user = %name, mechanism, "login refused");
            if self.capabilities.authentication_failure_close {
                let err = AmqpError::new(
                    crate::error::ReplyCode::AccessRefused,
                    format!(
                        "Login was refused using authentication mechanism {mechanism}. For details see the broker logfile."
                    ),
                );
                self.write_close(&err);
            }
            self.drop_silently();
            return;
        };
        self.user = Some(user);
        let limits = &self.broker.config.limits;
        let tune = amqp_connection::Tune {
            channel_max: limits.channel_max,
            frame_max: limits.frame_max_bytes,
            heartbeat: limits.heartbeat_s,
        };
        write_method(
            self.out.buf(),
            0,
            &AMQPClass::Connection(amqp_connection::AMQPMethod::Tune(tune)),
        );
        self.phase = Phase::TuneOk;
    }

    fn on_tune_ok(&mut self, ok: amqp_connection::TuneOk) {
        let limits = &self.broker.config.limits;
        // RabbitMQ's negotiation rules: the client may lower what was offered, not raise it,
        // and may not ask for "no limit". Anything else ends the connection silently.
        let frame_max_ok =
            ok.frame_max >= MIN_FRAME_MAX_BYTES && ok.frame_max <= limits.frame_max_bytes;
        let channel_max_ok = ok.channel_max != 0 && ok.channel_max <= limits.channel_max;
        if !frame_max_ok || !channel_max_ok {
            tracing::warn!(
                peer = %self.peer,
                frame_max = ok.frame_max,
                channel_max = ok.channel_max,
                "refused tune-ok outside the offered limits"
            );
            self.drop_silently();
            return;
        }
        self.frame_max = ok.frame_max;
        self.channel_max = ok.channel_max;
        self.heartbeat_s = ok.heartbeat;
        self.phase = Phase::Open;
    }

    fn on_open(&mut self, open: amqp_connection::Open) {
        let name = open.virtual_host.as_str();
        let Some(vhost) = self.broker.vhost(name) else {
            self.close_connection(
                amqp_error!(NotAllowed, "vhost {} not found", name).on_method(10, 40),
                false,
            );
            return;
        };
        let Some(user) = self.user.clone() else {
            self.drop_silently();
            return;
        };
        tracing::info!(
            peer = %self.peer,
            user = %user.name,
            vhost = %vhost.name,
            client = %self.client_name,
            "connection opened"
        );
        self.session = Some(Session {
            broker: self.broker.clone(),
            vhost,
            user,
            connection_id: self.id,
            outbox: self.outbox.clone(),
            frame_max: self.frame_max,
            capabilities: self.capabilities,
        });
        write_method(
            self.out.buf(),
            0,
            &AMQPClass::Connection(amqp_connection::AMQPMethod::OpenOk(
                amqp_connection::OpenOk {},
            )),
        );
        self.phase = Phase::Running;
    }

    // ---- channel frames -------------------------------------------------------------------

    fn channel_index(&self, id: u16) -> Result<usize, usize> {
        self.channels.binary_search_by_key(&id, |c| c.id)
    }

    fn on_channel_frame(&mut self, header: FrameHeader, payload: Bytes) -> Result<(), AmqpError> {
        match self.phase {
            Phase::Running => {}
            Phase::Closing { .. } => return Ok(()),
            Phase::Open => {
                return Err(amqp_error!(
                    UnexpectedFrame,
                    "{}",
                    octets_description(header.kind, &payload)
                ));
            }
            _ => {
                self.drop_silently();
                return Ok(());
            }
        }
        let ids = if header.kind == FRAME_METHOD {
            method_ids(&payload)
        } else {
            None
        };
        let index = match self.channel_index(header.channel) {
            Ok(i) => i,
            Err(at) => return self.on_unopened_channel(header.channel, at, ids, &payload),
        };
        let Connection {
            channels,
            session,
            out,
            ..
        } = self;
        let Some(session) = session.as_ref() else {
            return Ok(());
        };
        let ch = &mut channels[index];
        if !ch.is_open() {
            // Closing: wait for Close-Ok, answer Close, ignore the rest.
            return match ids {
                Some((20, 41)) => {
                    channels.remove(index);
                    Ok(())
                }
                Some((20, 40)) => {
                    write_channel_close_ok(out, header.channel);
                    Ok(())
                }
                Some((20, 10)) => {
                    Err(amqp_error!(ChannelError, "second 'channel.open' seen").on_method(20, 10))
                }
                Some((c, m)) if !crate::protocol::method::is_known(c, m) => {
                    Err(unknown_method(c, m))
                }
                _ => Ok(()),
            };
        }
        let result = match header.kind {
            FRAME_METHOD => match ids {
                Some((hot::CLASS_BASIC, hot::PUBLISH)) => hot::parse_publish(&payload)
                    .map_err(|_| cannot_decode(&payload))
                    .and_then(|p| ch.on_publish(p)),
                Some((hot::CLASS_BASIC, m @ (hot::ACK | hot::REJECT | hot::NACK))) => {
                    hot::parse_settle(m, &payload)
                        .map_err(|_| cannot_decode(&payload))
                        .and_then(|s| ch.on_settle(m, s))
                }
                Some((20, 41)) => {
                    Err(amqp_error!(CommandInvalid, "unimplemented method").on_method(20, 41))
                }
                Some((hot::CLASS_BASIC, 10))
                    if hot::qos_prefetch_size(&payload).is_some_and(|n| n != 0) =>
                {
                    let size = hot::qos_prefetch_size(&payload).unwrap_or_default();
                    Err(amqp_error!(NotImplemented, "prefetch_size!=0 ({})", size)
                        .on_method(60, 10))
                }
                _ => match parse_method(&payload) {
                    Err(e) => Err(method_error(e, &payload, false)),
                    Ok(method) => match ch.handle(session, out, method) {
                        Ok(After::Closed) => {
                            write_channel_close_ok(out, header.channel);
                            channels.remove(index);
                            Ok(())
                        }
                        Ok(After::Nothing) => Ok(()),
                        Err(e) => Err(e),
                    },
                },
            },
            FRAME_HEADER => match hot::parse_content_header(&payload) {
                Ok(h) => ch.on_header(session, out, h),
                Err(_) => Err(amqp_error!(
                    FrameError,
                    "{}: unknown_frame",
                    octets_description(header.kind, &payload)
                )),
            },
            _ => ch.on_body(session, out, payload),
        };
        match result {
            Ok(()) => Ok(()),
            Err(e) if e.is_hard() => Err(e),
            Err(e) => {
                // A soft error closes only this channel, after it has given back what it held.
                if let Ok(i) = self.channel_index(header.channel) {
                    let (channels, session, out) =
                        (&mut self.channels, &self.session, &mut self.out);
                    if let Some(session) = session {
                        channels[i].shutdown(session);
                    }
                    tracing::debug!(peer = %self.peer, channel = header.channel, code = e.code.code(), text = %e.text, "channel error");
                    write_channel_close(out, header.channel, &e);
                }
                Ok(())
            }
        }
    }

    fn on_unopened_channel(
        &mut self,
        id: u16,
        at: usize,
        ids: Option<(u16, u16)>,
        payload: &[u8],
    ) -> Result<(), AmqpError> {
        match ids {
            Some((20, 10)) => {
                if crate::protocol::method::parse_method(payload).is_err() {
                    return Err(cannot_decode(payload).on_method(20, 10));
                }
                if self.channels.len() >= self.channel_max as usize {
                    return Err(amqp_error!(
                        NotAllowed,
                        "number of channels opened ({}) has reached the negotiated channel_max ({})",
                        self.channels.len(),
                        self.channel_max
                    ));
                }
                self.channels.insert(
                    at,
                    Channel::new(id, self.broker.config.limits.max_unacked_per_channel),
                );
                write_method(
                    self.out.buf(),
                    id,
                    &AMQPClass::Channel(amq_protocol::protocol::channel::AMQPMethod::OpenOk(
                        amq_protocol::protocol::channel::OpenOk {},
                    )),
                );
                Ok(())
            }
            Some((c, m)) if !crate::protocol::method::is_known(c, m) => Err(unknown_method(c, m)),
            Some((c, m)) => {
                Err(amqp_error!(ChannelError, "expected 'channel.open'").on_method(c, m))
            }
            None => Err(amqp_error!(ChannelError, "expected 'channel.open'")),
        }
    }

    // ---- closing --------------------------------------------------------------------------

    fn write_close(&mut self, e: &AmqpError) {
        let close = amqp_connection::Close {
            reply_code: e.code.code(),
            reply_text: ShortString::from(e.wire_text().into_owned()),
            class_id: e.class_id,
            method_id: e.method_id,
        };
        write_method(
            self.out.buf(),
            0,
            &AMQPClass::Connection(amqp_connection::AMQPMethod::Close(close)),
        );
    }

    /// Closes the connection with an error: channels give back what they hold, the client
    /// gets Connection.Close and has until the deadline to answer.
    fn close_connection(&mut self, e: AmqpError, fatal: bool) {
        if matches!(
            self.phase,
            Phase::Closing { .. } | Phase::Finished { .. } | Phase::Dropping { .. }
        ) {
            return;
        }
        tracing::warn!(
            peer = %self.peer,
            code = e.code.code(),
            text = %e.text,
            class_id = e.class_id,
            method_id = e.method_id,
            "closing connection on error"
        );
        self.shutdown_channels();
        self.write_close(&e);
        let wait = if fatal {
            HANDSHAKE_FAILURE_DELAY
        } else if (1..30).contains(&self.heartbeat_s) {
            Duration::from_secs(self.heartbeat_s as u64)
        } else {
            CLOSE_TIMEOUT
        };
        self.phase = Phase::Closing {
            deadline: Instant::now() + wait,
            fatal,
        };
    }

    fn shutdown_channels(&mut self) {
        if let Some(session) = &self.session {
            for ch in &mut self.channels {
                ch.shutdown(session);
            }
        }
        self.channels.clear();
    }

    // ---- the outbox -----------------------------------------------------------------------

    /// Turns what queues pushed into frames: deliveries get their delivery tags here.
    fn drain_outbox(&mut self) {
        let mut drained = std::mem::take(&mut self.drained);
        self.outbox.drain(&mut drained);
        let mut undelivered: Vec<Delivery> = Vec::new();
        let now = std::time::Instant::now();
        for d in drained.deliveries.drain(..) {
            match self.channel_index(d.channel) {
                Ok(i) => match self.channels[i].deliver(d, &mut self.out, self.frame_max, now) {
                    Ok(bytes) => self.unflushed_delivery_bytes += bytes,
                    Err(d) => {
                        if !d.no_ack && self.channels[i].prefetch().release(1) {
                            for q in self.channels[i].consumed_queues() {
                                q.kick(Unblock::Channel(self.channels[i].prefetch()));
                            }
                        }
                        undelivered.push(d);
                    }
                },
                Err(_) => undelivered.push(d),
            }
        }
        for event in drained.events.drain(..) {
            self.on_event(event);
        }
        self.drained = drained;
        return_to_queues(undelivered);
    }

    fn on_event(&mut self, event: OutboxEvent) {
        match event {
            OutboxEvent::ConsumerCancelled {
                channel,
                consumer_tag,
            } => {
                if let Ok(i) = self.channel_index(channel)
                    && self.channels[i].is_open()
                    && self.channels[i].consumer_cancelled(&consumer_tag)
                    && self.capabilities.consumer_cancel_notify
                {
                    let tag = String::from_utf8_lossy(&consumer_tag).into_owned();
                    write_method(
                        self.out.buf(),
                        channel,
                        &AMQPClass::Basic(amqp_basic::AMQPMethod::Cancel(amqp_basic::Cancel {
                            consumer_tag: ShortString::from(tag),
                            nowait: true,
                        })),
                    );
                }
            }
            OutboxEvent::DirectReply {
                channel,
                key,
                message,
            } => {
                // Counted as pending when pushed: count it as written once the output
                // drains, whether or not the consumer was still there to take it.
                self.unflushed_delivery_bytes += message.wire_size();
                if let Ok(i) = self.channel_index(channel) {
                    self.channels[i].direct_reply(&key, &message, &mut self.out, self.frame_max);
                }
            }
            OutboxEvent::Close { code, text } => {
                if matches!(self.phase, Phase::Running | Phase::Open) {
                    self.shutdown_channels();
                    let close = amqp_connection::Close {
                        reply_code: code,
                        reply_text: ShortString::from(text),
                        class_id: 0,
                        method_id: 0,
                    };
                    write_method(
                        self.out.buf(),
                        0,
                        &AMQPClass::Connection(amqp_connection::AMQPMethod::Close(close)),
                    );
                }
                self.finish();
            }
        }
    }

    /// Releases everything the connection held, however it ended.
    fn cleanup(&mut self, exit: Exit) {
        self.shutdown_channels();
        let left = self.outbox.close();
        return_to_queues(left.deliveries);
        if let Some(session) = &self.session {
            session.vhost.remove_exclusive_queues(self.id);
        }
        self.broker.unregister_connection(self.id);
        match exit {
            Exit::Done(reason) => {
                if self.session.is_some() {
                    tracing::info!(peer = %self.peer, reason, "connection closed");
                } else {
                    tracing::debug!(peer = %self.peer, reason, "connection closed during handshake");
                }
            }
            Exit::Io(e) => tracing::info!(peer = %self.peer, error = %e, "connection lost"),
        }
    }
}

/// Gives deliveries that never reached their channel back to their queues.
fn return_to_queues(deliveries: Vec<Delivery>) {
    let mut groups: Vec<(Arc<Queue>, Vec<Delivery>)> = Vec::new();
    for d in deliveries {
        match groups.iter_mut().find(|(q, _)| Arc::ptr_eq(q, &d.queue)) {
            Some((_, list)) => list.push(d),
            None => groups.push((d.queue.clone(), vec![d])),
        }
    }
    for (q, list) in groups {
        q.return_undelivered(list);
    }
}

fn write_channel_close_ok(out: &mut Output, channel: u16) {
    write_method(
        out.buf(),
        channel,
        &AMQPClass::Channel(amq_protocol::protocol::channel::AMQPMethod::CloseOk(
            amq_protocol::protocol::channel::CloseOk {},
        )),
    );
}

fn write_channel_close(out: &mut Output, channel: u16, e: &AmqpError) {
    let close = amq_protocol::protocol::channel::Close {
        reply_code: e.code.code(),
        reply_text: ShortString::from(e.wire_text().into_owned()),
        class_id: e.class_id,
        method_id: e.method_id,
    };
    write_method(
        out.buf(),
        channel,
        &AMQPClass::Channel(amq_protocol::protocol::channel::AMQPMethod::Close(close)),
    );
}

/// RabbitMQ's text for method arguments that do not decode.
fn cannot_decode(payload: &[u8]) -> AmqpError {
    let (class_id, method_id) = method_ids(payload).unwrap_or((0, 0));
    amqp_error!(
        FrameError,
        "cannot decode {}",
        erlang_numeric_binary(&payload[4.min(payload.len())..])
    )
    .on_method(class_id, method_id)
}

/// An unknown class or method. RabbitMQ's reader crashes on these and resets the socket;
/// Lepus says what happened instead (a documented difference).
fn unknown_method(class_id: u16, method_id: u16) -> AmqpError {
    amqp_error!(
        CommandInvalid,
        "unknown method {} of class {}",
        method_id,
        class_id
    )
    .on_method(class_id, method_id)
}

fn method_error(e: MethodError, payload: &[u8], on_channel_zero: bool) -> AmqpError {
    match e {
        MethodError::NoIds => amqp_error!(
            FrameError,
            "{}: unknown_frame",
            octets_description(FRAME_METHOD, payload)
        ),
        MethodError::Unknown {
            class_id,
            method_id,
        } => unknown_method(class_id, method_id),
        // Malformed connection-class arguments: RabbitMQ answers a bare INTERNAL_ERROR.
        MethodError::Malformed { .. } if on_channel_zero => {
            AmqpError::bare(crate::error::ReplyCode::InternalError)
        }
        MethodError::Malformed { .. } => cannot_decode(payload),
    }
}
