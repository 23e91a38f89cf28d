//! A client connection: one task that owns the transport, reads and parses frames in place,
//! runs them against its channels, drains deliveries from its outbox and writes everything
//! back in batches.
//!
//! The task loops over: parse every complete frame in the read buffer; drain the outbox into
//! the output; flush confirms; write as much as the transport takes; then wait until the
//! transport is readable (or writable, when output is pending), the outbox has something, or
//! a timer (heartbeat, handshake, close) is due.
//!
//! This file is the task's loop, its I/O and its timers. Beside it: parsing and routing
//! frames ([`frames`]), the handshake and connection methods ([`handshake`]), closing and
//! draining the outbox ([`close`]), and the frames and errors it writes ([`replies`]).

mod close;
mod flow;
mod frames;
mod handshake;
mod replies;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::Interest;
use tokio::time::Instant;

use super::channel::Channel;
use super::input::Input;
use super::outbox::{Drained, Outbox};
use super::output::{Output, iovecs};
use super::session::{ClientCapabilities, Session};
use crate::auth;
use crate::broker::Broker;
use crate::broker::alarms::Raised;
use crate::broker::connections::Unopened;
use crate::broker::memory::Charge;
use crate::broker::queue::Queue;
use crate::broker::queue::delivery::{DeliverySource, Unblock};
use crate::config::MIN_FRAME_MAX_BYTES;
use crate::net::Transport;
use replies::write_channel_close;

pub(super) const HANDSHAKE_FAILURE_DELAY: Duration = Duration::from_secs(3);
/// How long to wait for Close-Ok after sending Connection.Close, at most.
pub(super) const CLOSE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long after output first empties a connection frees the buffer a burst grew (if
/// output is empty then).
const SHRINK_OUTPUT_AFTER: Duration = Duration::from_secs(1);
/// How far off a connection with nothing timed sets its timer: past it, the timer only
/// finds there is still nothing to do.
const IDLE_DEADLINE: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
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

/// Where the connection is in RabbitMQ's flow control under a memory or disk alarm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Running,
    /// An alarm is raised: the next message this connection publishes blocks it.
    Blocking,
    /// It published during an alarm: nothing more is read or processed until the alarm
    /// clears. `told`: the client was sent connection.blocked.
    Blocked {
        told: bool,
    },
}

/// Why the connection task stopped.
#[derive(Debug)]
pub(super) enum Exit {
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
    transport: Transport,
    peer: SocketAddr,
    id: u64,
    outbox: Arc<Outbox>,
    phase: Phase,
    /// Bytes read from the transport and not yet parsed.
    input: Input,
    out: Output,
    /// Largest frame accepted from the client: 4096 until Tune-Ok, then the negotiated value.
    frame_max: u32,
    channel_max: u16,
    /// Negotiated heartbeat in seconds; 0 disables heartbeats.
    heartbeat_s: u16,
    last_recv: Instant,
    /// Whether the last wait read the socket: missed heartbeats count only while it does.
    reading: bool,
    last_send: Instant,
    /// Since when output has been waiting for a client that reads none of it; past the send
    /// timeout the connection is closed.
    stalled_since: Option<Instant>,
    /// When to free the output buffer a burst grew, if output is empty then. Freeing it
    /// whenever output emptied made a connection that delivers steadily grow it again
    /// from nothing for every write (1.5% of a persistent drain's time).
    shrink_at: Option<Instant>,
    accepted_at: Instant,
    capabilities: ClientCapabilities,
    user: Option<Arc<auth::User>>,
    /// The client properties and SASL mechanism of Connection.StartOk, kept for the
    /// management API until the connection opens.
    start_ok: Option<(Box<[u8]>, String)>,
    /// Client name for logs (`connection_name` client property).
    client_name: String,
    session: Option<Session>,
    /// Open channels, sorted by id. Boxed, so opening or closing one shifts pointers, not
    /// whole channels (952 bytes each): with 2,047 open, a loop of channel.open and close
    /// on the lowest id moved about 2 MB per frame.
    #[allow(
        clippy::vec_box,
        reason = "shifting boxes on open and close, not channels"
    )]
    channels: Vec<Box<Channel>>,
    /// A channel's tx.commit or queue.purge is under way (`Channel::continue_work`): the
    /// task takes a batch of it per turn and yields in between, and parses no more input
    /// until it is done, so what follows it still comes after it.
    continuing: bool,
    /// Input is left unparsed until output falls under its limit (`output_full`): once it
    /// has, the next turn parses it without waiting for the client to send more.
    parse_paused: bool,
    /// Work the frames parsed this turn made their channels do (`Channel::take_work`):
    /// past `INPUT_WORK_PER_TURN` parsing pauses until the task has yielded.
    input_work: usize,
    /// Reused buffers for draining the outbox.
    drained: Drained,
    /// The output waiting for the client and the buffer it keeps, charged to the memory
    /// gauge (the input charges its own chunks).
    buffers: Charge,
    /// Bytes of deliveries encoded into `out` since it was last empty.
    unflushed_delivery_bytes: usize,
    /// Changes when the store syncs: wakes the task to send held confirms and replies.
    synced: tokio::sync::watch::Receiver<u64>,
    /// Changes when a memory or disk alarm is raised or cleared.
    alarms: tokio::sync::watch::Receiver<Raised>,
    flow: Flow,
    /// The connection's one timer, moved to each wait's deadline. A timer made for every
    /// wait and dropped after it took the runtime's timer lock twice per wake-up; moving
    /// this one later is a single atomic store.
    timer: Pin<Box<tokio::time::Sleep>>,
    /// Its place among its network's connections that have not opened yet, given back at
    /// `connection.open` (`max_unopened_connections_per_address`).
    unopened: Option<Unopened>,
}

/// Serves one client connection until it closes.
pub async fn serve(
    broker: Arc<Broker>,
    transport: Transport,
    peer: SocketAddr,
    outbox: Arc<Outbox>,
    unopened: Unopened,
) {
    let now = Instant::now();
    let input = Input::new(broker.config.limits.read_chunk_bytes, broker.memory);
    let synced = broker.store.shared.subscribe();
    let alarms = broker.alarms.subscribe();
    let mut conn = Connection {
        synced,
        alarms,
        flow: Flow::Running,
        frame_max: MIN_FRAME_MAX_BYTES,
        channel_max: broker.config.limits.channel_max,
        heartbeat_s: 0,
        broker,
        transport,
        peer,
        id: outbox.connection_id,
        outbox,
        phase: Phase::Header,
        input,
        out: Output::default(),
        last_recv: now,
        reading: true,
        last_send: now,
        stalled_since: None,
        shrink_at: None,
        accepted_at: now,
        capabilities: ClientCapabilities::default(),
        user: None,
        client_name: String::new(),
        start_ok: None,
        session: None,
        channels: Vec::new(),
        continuing: false,
        parse_paused: false,
        input_work: 0,
        drained: Drained::default(),
        unflushed_delivery_bytes: 0,
        buffers: Charge::default(),
        timer: Box::pin(tokio::time::sleep_until(now + IDLE_DEADLINE)),
        unopened: Some(unopened),
    };
    conn.buffers = Charge::new(conn.broker.memory, 0);
    let ran = CatchPanic(Box::pin(conn.run())).await;
    let exit = ran.unwrap_or_else(|_| {
        tracing::error!(peer = %conn.peer, "a connection's task panicked (a bug); cleaning up after it");
        Exit::Done("panicked")
    });
    conn.cleanup(exit);
}

/// A future that turns a panic while it is polled into `Err`. A bug that panics in one
/// connection's task must still let the connection clean up after itself (its entry in the
/// registry, which `max_connections` counts; its exclusive queues; what it held for consumers),
/// or every such panic would leak them for good.
struct CatchPanic<F>(F);

impl<F: Future + Unpin> Future for CatchPanic<F> {
    type Output = std::thread::Result<F::Output>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let inner = &mut self.get_mut().0;
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            std::pin::Pin::new(inner).poll(cx)
        })) {
            Ok(poll) => poll.map(Ok),
            Err(panic) => std::task::Poll::Ready(Err(panic)),
        }
    }
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
            if self.continuing {
                // Nothing is read meanwhile, so the client's heartbeats count again from
                // when reading resumes, as after any pause in reading (`wait`). The timed
                // duties `wait` runs go on between batches: heartbeats to the client, the
                // send timeout, consumer timeouts.
                self.reading = false;
                let now = Instant::now();
                if now >= self.next_deadline(now)
                    && let Err(exit) = self.on_timer(now)
                {
                    return exit;
                }
                // The next batch after the runtime's other tasks have had their turn.
                tokio::task::yield_now().await;
                continue;
            }
            // Over TLS the last output can still be records in the session, waiting for the
            // socket: they are part of what was queued (Close-Ok among them).
            if matches!(self.phase, Phase::Finished { .. })
                && self.out.is_empty()
                && !self.transport.wants_write()
            {
                return Exit::Done("closed");
            }
            if let Err(exit) = self.wait().await {
                return exit;
            }
        }
    }

    /// Does all the work that needs no waiting.
    fn step(&mut self) -> Result<(), Exit> {
        if self.continuing {
            self.continue_work();
        }
        // An alarm raised before the input arrived blocks it, whichever of the two `wait`
        // saw first: its select takes ready events in no set order, so a publish could
        // otherwise slip past an alarm already raised (RabbitMQ's reader takes the alarm
        // and the socket's data from one mailbox, in the order they came).
        if self.alarms.has_changed().unwrap_or(false) {
            self.on_alarm();
        }
        // Same as RabbitMQ, whose reader is closing by the time an operator's close returns:
        // what the client sends after that is not acted on. The close waits in the outbox,
        // which is otherwise drained after the input.
        if self.outbox.close_requested() && matches!(self.phase, Phase::Running | Phase::Open) {
            self.drain_outbox();
        }
        self.process_input();
        if matches!(
            self.phase,
            Phase::Running | Phase::Closing { .. } | Phase::Finished { .. }
        ) {
            self.drain_outbox();
        }
        let shared = self.broker.store.shared.clone();
        let synced = shared.synced();
        let failed = |epoch: u64| shared.failed(epoch);
        if self.out.release_holds(synced, failed).is_err() {
            // A reply that promised durability (declare-ok of a durable entity, commit-ok)
            // is dropped unsent: its writes failed. The client learns it from a close.
            self.close_connection(
                crate::amqp_error!(
                    InternalError,
                    "the data directory refused a write; what was declared or committed may not survive a restart"
                ),
                false,
            );
        }
        for ch in &mut self.channels {
            ch.flush_confirms(&mut self.out, synced, &failed);
        }
        self.buffers.set(self.out.memory());
        Ok(())
    }

    /// Whether something waits for the store to sync.
    fn waiting_for_sync(&self) -> bool {
        self.out.has_holds() || self.channels.iter().any(|ch| ch.waiting_for_sync())
    }

    fn too_many_unconfirmed(&self) -> bool {
        let max = self.broker.config.limits.max_unconfirmed_per_channel;
        self.channels.iter().any(|ch| ch.unconfirmed() >= max)
    }

    /// Waits for the socket, the outbox or a timer.
    async fn wait(&mut self) -> Result<(), Exit> {
        if self.parse_paused && self.out.len() < self.output_limit() {
            // The client may be waiting for the answers to what it already sent (output
            // held for a sync went out all at once, or a turn's worth of work was done):
            // parse it now, after the runtime's other tasks have had their turn. As while
            // a tx.commit runs, nothing is read from the socket meanwhile, so the client's
            // heartbeats count again from when reading resumes, and the timed duties
            // (heartbeats to the client, send and consumer timeouts) go on between turns.
            self.reading = false;
            let now = Instant::now();
            if now >= self.next_deadline(now) {
                self.on_timer(now)?;
            }
            tokio::task::yield_now().await;
            return Ok(());
        }
        // A deadline already past is not handled here and now: it goes through the select
        // below like any other, whose timer is ready at once. So even a deadline that
        // `on_timer` failed to move (a bug) would not spin here without ever yielding: the
        // timer spends the task's cooperative budget, and the other events (an alarm
        // cleared, the socket) still get their turn.
        let reading = match self.phase {
            Phase::Dropping { .. } | Phase::Finished { .. } => false,
            Phase::Closing { fatal, .. } => !fatal,
            // A publisher blocked by an alarm is not read from until it clears.
            _ if matches!(self.flow, Flow::Blocked { .. }) => false,
            // A channel with max_unconfirmed_per_channel publishes waiting for the disk is
            // not read from until they are confirmed: credit flow, not an error.
            _ if self.too_many_unconfirmed() => false,
            // Stop reading while a client does not read what we send it.
            _ => self.out.len() < self.output_limit(),
        };
        // As RabbitMQ's reader, which pauses its heartbeat monitor whenever it stops
        // reading (an alarm, credit flow): a client that is not read from cannot be heard,
        // so its heartbeats count only while it is read, and from when reading resumes.
        if reading != self.reading {
            if reading {
                self.last_recv = Instant::now();
            }
            self.reading = reading;
        }
        let deadline = self.next_deadline(Instant::now());
        if self.timer.deadline() != deadline {
            self.timer.as_mut().reset(deadline);
        }
        let writing = self.out.writable_len() > 0 || self.transport.wants_write();
        let syncing = self.waiting_for_sync();
        let interest = match (reading, writing) {
            (true, true) => Some(Interest::READABLE | Interest::WRITABLE),
            (true, false) => Some(Interest::READABLE),
            (false, true) => Some(Interest::WRITABLE),
            (false, false) => None,
        };
        let transport = &self.transport;
        let timer = self.timer.as_mut();
        tokio::select! {
            ready = async {
                match interest {
                    Some(i) => transport.ready(i).await,
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
            changed = self.alarms.changed() => {
                if changed.is_ok() {
                    self.on_alarm();
                }
            }
            _ = timer => {
                return self.on_timer(Instant::now());
            }
        }
        Ok(())
    }

    fn send_timeout(&self) -> Duration {
        Duration::from_millis(self.broker.config.limits.send_timeout_ms)
    }

    fn output_limit(&self) -> usize {
        4 * self.broker.config.limits.connection_outbox_bytes
    }

    /// Whether output is at its limit even after writing what the socket takes now. Input
    /// left unparsed for it is parsed in a later step, which every wake-up runs: `wait`
    /// waits for the socket to take more while output is over the limit, so the input
    /// already read is never left waiting for more input. (An error writing is left for the
    /// flush after the step to report.)
    fn output_full(&mut self) -> bool {
        self.parse_paused = self.out.len() >= self.output_limit()
            && (self.flush().is_err() || self.out.len() >= self.output_limit());
        self.parse_paused
    }

    fn read(&mut self) -> Result<(), Exit> {
        match self.input.read(&mut self.transport, self.frame_max) {
            Ok(0) => Err(Exit::Done("client closed the socket")),
            Ok(n) => {
                crate::broker::stats::bump(&self.outbox.info.recv_oct, n as u64);
                crate::broker::stats::bump(&self.outbox.info.recv_cnt, 1);
                self.last_recv = Instant::now();
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(Exit::Io(e)),
        }
    }

    /// Writes as much output as the socket takes without waiting.
    fn flush(&mut self) -> std::io::Result<()> {
        let progress = self.write_out()?;
        // The send timeout counts from the last write that made progress while output was
        // waiting; output held back for the store does not count.
        self.stalled_since = match (self.out.writable_len() > 0, progress) {
            (false, _) => None,
            (true, true) => Some(Instant::now()),
            (true, false) => Some(self.stalled_since.unwrap_or_else(Instant::now)),
        };
        if self.out.is_empty() {
            if self.shrink_at.is_none() && self.out.holds_large_buffer() {
                self.shrink_at = Some(self.last_send + SHRINK_OUTPUT_AFTER);
            }
            let delivered = std::mem::take(&mut self.unflushed_delivery_bytes)
                + self.outbox.take_taken_back_bytes();
            if self.outbox.written(delivered) {
                // Queues skipped our consumers while we were full: ask them again.
                for q in self.consumed_queues() {
                    q.kick(Unblock::Sink(self.id));
                }
            }
        }
        Ok(())
    }

    /// The writing half of [`Connection::flush`]: writes what the socket takes without
    /// waiting, and says whether it took anything.
    fn write_out(&mut self) -> std::io::Result<bool> {
        // TLS records left from the handshake or the last write go first.
        self.transport.flush_own()?;
        let mut progress = false;
        while self.out.writable_len() > 0 {
            let mut iov = iovecs();
            let n = self.out.slices(&mut iov);
            match self.transport.try_write_vectored(&iov[..n]) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(written) => {
                    crate::broker::stats::bump(&self.outbox.info.send_oct, written as u64);
                    crate::broker::stats::bump(&self.outbox.info.send_cnt, 1);
                    self.out.consume(written);
                    self.last_send = Instant::now();
                    progress = true;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        if progress {
            // The send timeout counts from the last write that made progress (see
            // `flush`), also when that was an early write of a drain of the outbox.
            self.stalled_since = (self.out.writable_len() > 0).then(Instant::now);
        }
        Ok(progress)
    }

    fn consumed_queues(&self) -> Vec<Arc<Queue>> {
        let mut seen = std::collections::HashSet::new();
        let mut all: Vec<Arc<Queue>> = Vec::new();
        for ch in &self.channels {
            all.extend(
                ch.consumed_queues()
                    .into_iter()
                    .filter(|q| seen.insert(Arc::as_ptr(q))),
            );
        }
        all
    }

    // ---- timers ---------------------------------------------------------------------------

    fn next_deadline(&self, now: Instant) -> Instant {
        let far = now + IDLE_DEADLINE;
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
        if let Some(since) = self.stalled_since {
            deadline = deadline.min(since + self.send_timeout());
        }
        if let Some(at) = self.shrink_at {
            deadline = deadline.min(at);
        }
        if self.heartbeat_s > 0 && !matches!(self.phase, Phase::Dropping { .. }) {
            let hb = Duration::from_secs(self.heartbeat_s as u64);
            deadline = deadline.min(self.last_send + hb / 2);
            // Paused while the connection is not read from, as in `on_timer`.
            if self.reading {
                deadline = deadline.min(self.last_recv + hb * 2);
            }
        }
        // Only what `check_consumer_timeouts` checks: a deadline nothing would check stays due.
        if matches!(self.phase, Phase::Running) {
            for ch in self.channels.iter().filter(|ch| ch.is_open()) {
                if let Some(at) = ch.next_timeout() {
                    deadline = deadline.min(Instant::from_std(at));
                }
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
        if self
            .stalled_since
            .is_some_and(|t| now >= t + self.send_timeout())
        {
            // RabbitMQ's TCP send timeout: a client that reads nothing for this long is
            // disconnected, and what its channels held goes back to the queues.
            tracing::warn!(
                peer = %self.peer,
                timeout_ms = self.broker.config.limits.send_timeout_ms,
                "client stopped reading; closing the connection"
            );
            return Err(Exit::Done("send timeout"));
        }
        if self.shrink_at.is_some_and(|at| now >= at) {
            self.shrink_at = None;
            // Still busy: the next time output empties sets another time.
            if self.out.is_empty() {
                self.out.shrink();
            }
        }
        if self.heartbeat_s > 0 {
            let hb = Duration::from_secs(self.heartbeat_s as u64);
            // A connection not read from (blocked by an alarm, or held back by credit
            // flow) cannot be heard: as in RabbitMQ, the heartbeat monitor pauses meanwhile.
            if self.reading && now >= self.last_recv + hb * 2 {
                tracing::warn!(
                    peer = %self.peer,
                    timeout_s = self.heartbeat_s,
                    "missed heartbeats from client; closing the connection"
                );
                return Err(Exit::Done("missed heartbeats"));
            }
            if now >= self.last_send + hb / 2 {
                // Output still waiting means the client is not reading, and no heartbeat is
                // queued behind it; output held back for the disk does not count. Either
                // way the interval starts again now.
                self.out.heartbeat();
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
                self.channels[i].flush_resolved_confirms(session, &mut self.out);
                self.channels[i].shutdown(session);
            }
            write_channel_close(&mut self.out, id, &e);
        }
    }
}
