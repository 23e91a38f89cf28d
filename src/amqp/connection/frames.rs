//! Input: the protocol header, splitting frames out of the read buffer, and routing each
//! frame to the connection (channel 0) or to its channel, with RabbitMQ's answers to frames
//! that do not belong where they came.

use amq_protocol::protocol::AMQPClass;
use bytes::Bytes;
use tokio::time::Instant;

use super::replies::{
    cannot_decode, method_error, unknown_method, write_channel_close, write_channel_close_ok,
};
use super::{CLOSE_TIMEOUT, Connection, HANDSHAKE_FAILURE_DELAY, Phase};

/// Deliveries (or queues) one turn of parsing may move or ask before it yields: about a
/// few milliseconds of work. Plain frames count nothing.
const INPUT_WORK_PER_TURN: usize = 1 << 16;
use crate::amqp::channel::{After, Channel};
use crate::amqp::input::Frame;
use crate::amqp_error;
use crate::protocol::basic as hot;
use crate::protocol::error::AmqpError;
use crate::protocol::frame::{
    FRAME_BODY, FRAME_HEADER, FRAME_HEARTBEAT, FRAME_METHOD, FrameHeader, PROTOCOL_HEADER,
    octets_description,
};
use crate::protocol::method::{method_ids, parse_method, write_method};

impl Connection {
    /// Parses and handles every complete frame in the read buffer.
    pub(super) fn process_input(&mut self) {
        self.parse_paused = false;
        self.input_work = 0;
        loop {
            if self.input_work >= INPUT_WORK_PER_TURN {
                // Frames whose cost grows with what a channel holds (an ack of everything
                // and a tx.rollback, over a million unacknowledged deliveries, sent over
                // and over): the rest waits until the runtime's other tasks, on this worker
                // too, have had their turn (`wait` yields while parsing is paused).
                self.parse_paused = true;
                return;
            }
            match self.phase {
                Phase::Dropping { .. } | Phase::Finished { .. } => {
                    self.input.clear();
                    return;
                }
                Phase::Closing { fatal: true, .. } => {
                    self.input.clear();
                    return;
                }
                Phase::Header => {
                    let Some(header) = self.input.take(PROTOCOL_HEADER.len()) else {
                        return;
                    };
                    self.on_protocol_header(&header);
                    continue;
                }
                _ => {}
            }
            if self.continuing && matches!(self.phase, Phase::Running) {
                // The rest waits for the tx.commit or purge under way (`continue_work`).
                return;
            }
            if matches!(self.phase, Phase::Running) && self.output_full() {
                // What is left waits until the client reads what it was sent: a few bytes of
                // input can ask for a lot of output (a basic.get of a large message, given
                // back by basic.recover and got again), and `wait` stops reading only between
                // reads, not within the frames one read brought.
                return;
            }
            if self.is_blocked() && matches!(self.phase, Phase::Running) {
                // Held until the alarm clears: the rest stays in the buffer. A connection
                // the broker is closing is read on whatever its flow (as RabbitMQ's reader,
                // which leaves `blocked` when it closes): its Close-Ok must be seen, and
                // what it sends meanwhile is parsed and dropped, not kept.
                return;
            }
            let (header, payload) = match self.input.next_frame(self.frame_max) {
                Ok(Some(Frame {
                    header,
                    payload,
                    rest: None,
                })) => (header, payload),
                Ok(Some(frame)) => match self.on_split_body(frame) {
                    Some(joined) => joined,
                    None => continue,
                },
                Ok(None) => return,
                Err(e) => {
                    self.fail_framing(e);
                    return;
                }
            };
            // The one call of `on_frame`, which keeps it inlined here (the hot path).
            self.on_frame(header, payload);
        }
    }

    pub(super) fn on_protocol_header(&mut self, header: &[u8]) {
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
    pub(super) fn finish(&mut self) {
        self.phase = Phase::Finished {
            deadline: Instant::now() + CLOSE_TIMEOUT,
        };
    }

    pub(super) fn in_handshake(&self) -> bool {
        matches!(self.phase, Phase::StartOk | Phase::TuneOk)
    }

    /// A framing error: before Tune-Ok the connection is dropped silently, afterwards the
    /// client gets a Connection.Close and the socket closes 3 s later whatever it answers.
    pub(super) fn fail_framing(&mut self, e: AmqpError) {
        if self.in_handshake() {
            self.drop_silently();
        } else if matches!(self.phase, Phase::Closing { .. }) {
            // Already closing, and what follows cannot be parsed: it is not read on (it
            // would pile up unparsed until the deadline, each read copying all of it
            // again); the socket closes once what is queued is written.
            self.input.clear();
            self.finish();
        } else {
            self.close_connection(e, true);
        }
    }

    /// RabbitMQ's answer to a failed handshake: nothing, and the socket closed 3 s later.
    pub(super) fn drop_silently(&mut self) {
        self.phase = Phase::Dropping {
            at: Instant::now() + HANDSHAKE_FAILURE_DELAY,
        };
    }

    /// A body frame whose start and end came in different reads, as two slices. On an open
    /// channel of a running connection (every well-behaved publisher's large bodies) they go
    /// to the channel as they are, so neither is copied; anywhere else the frame is returned
    /// joined, to be taken like any other, so every answer to a misplaced frame stays the
    /// same.
    #[inline(never)]
    fn on_split_body(&mut self, frame: Frame) -> Option<(FrameHeader, Bytes)> {
        let channel = frame.header.channel;
        let open = match self.phase {
            Phase::Running if channel != 0 => self
                .channel_index(channel)
                .ok()
                .filter(|&i| self.channels[i].is_open()),
            _ => None,
        };
        let (Some(index), Some(session)) = (open, self.session.as_ref()) else {
            return Some((frame.header, frame.joined()));
        };
        // As `on_channel_frame` and `on_frame` answer an error.
        match self.channels[index].on_body(session, &mut self.out, frame.payload, frame.rest) {
            Ok(()) => {}
            Err(e) if e.is_hard() => self.close_connection(e, false),
            Err(e) => self.fail_channel(channel, e),
        }
        self.on_content_frame();
        None
    }

    pub(super) fn on_frame(&mut self, header: FrameHeader, payload: Bytes) {
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

    pub(super) fn channel_index(&self, id: u16) -> Result<usize, usize> {
        self.channels.binary_search_by_key(&id, |c| c.id)
    }

    pub(super) fn on_channel_frame(
        &mut self,
        header: FrameHeader,
        payload: Bytes,
    ) -> Result<(), AmqpError> {
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
        if !self.channels[index].is_open() {
            return self.on_closing_channel(index, header.channel, ids);
        }
        let ran = self.run_on_channel(index, header, ids, payload);
        // After a channel.close the index may name the next channel, whose count is 0.
        if let Some(ch) = self.channels.get_mut(index) {
            self.input_work += ch.take_work();
        }
        match ran {
            Ok(()) => Ok(()),
            Err(e) if e.is_hard() => Err(e),
            Err(e) => {
                self.fail_channel(header.channel, e);
                Ok(())
            }
        }
    }

    /// A frame for a channel the broker is closing: wait for Close-Ok, answer Close, ignore
    /// the rest.
    fn on_closing_channel(
        &mut self,
        index: usize,
        channel: u16,
        ids: Option<(u16, u16)>,
    ) -> Result<(), AmqpError> {
        match ids {
            Some((20, 41)) => {
                self.channels.remove(index);
                Ok(())
            }
            Some((20, 40)) => {
                write_channel_close_ok(&mut self.out, channel);
                Ok(())
            }
            Some((20, 10)) => {
                Err(amqp_error!(ChannelError, "second 'channel.open' seen").on_method(20, 10))
            }
            Some((c, m)) if !crate::protocol::method::is_known(c, m) => Err(unknown_method(c, m)),
            _ => Ok(()),
        }
    }

    /// Runs a frame on the open channel at `index`: the hot path (publish, content, settle)
    /// decoded by hand, everything else through amq-protocol.
    fn run_on_channel(
        &mut self,
        index: usize,
        header: FrameHeader,
        ids: Option<(u16, u16)>,
        payload: Bytes,
    ) -> Result<(), AmqpError> {
        let Connection {
            channels,
            session,
            out,
            continuing,
            ..
        } = self;
        let Some(session) = session.as_ref() else {
            return Ok(());
        };
        let ch = &mut channels[index];
        match header.kind {
            // Same as RabbitMQ, whose content assembler sees every frame first: a method
            // while a message's content is expected is refused before it is decoded.
            FRAME_METHOD if ch.expect_method().is_err() => ch.expect_method(),
            FRAME_METHOD => match ids {
                Some((hot::CLASS_BASIC, hot::PUBLISH)) => hot::parse_publish(payload)
                    .map_err(|payload| cannot_decode(&payload))
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
                        Ok(After::Continues) => {
                            *continuing = true;
                            Ok(())
                        }
                        Err(e) => Err(e),
                    },
                },
            },
            FRAME_HEADER => match hot::parse_content_header(payload) {
                Ok(h) => {
                    let r = ch.on_header(session, out, h);
                    self.on_content_frame();
                    r
                }
                Err(payload) => Err(amqp_error!(
                    FrameError,
                    "{}: unknown_frame",
                    octets_description(header.kind, &payload)
                )),
            },
            _ => {
                let r = ch.on_body(session, out, payload, None);
                self.on_content_frame();
                r
            }
        }
    }

    /// Takes the next step of each tx.commit or queue.purge under way; when they are done
    /// (or the connection no longer runs), input is parsed again. A commit's errors are
    /// its own, as if it had run in one go.
    pub(super) fn continue_work(&mut self) {
        let Some(session) = self
            .session
            .as_ref()
            .filter(|_| matches!(self.phase, Phase::Running))
        else {
            // A closing connection's channels drop what is left (`Channel::shutdown`).
            self.continuing = false;
            return;
        };
        let mut failed = Vec::new();
        let mut pending = false;
        for ch in self.channels.iter_mut().filter(|c| c.is_continuing()) {
            match ch.continue_work(session, &mut self.out) {
                Ok(done) => pending |= !done,
                Err(e) => failed.push((ch.id, e)),
            }
        }
        self.continuing = pending;
        for (channel, e) in failed {
            if e.is_hard() {
                self.close_connection(e, false);
                return;
            }
            self.fail_channel(channel, e);
        }
    }

    /// A soft error closes only its channel, after the channel has given back what it held.
    fn fail_channel(&mut self, channel: u16, e: AmqpError) {
        let Ok(i) = self.channel_index(channel) else {
            return;
        };
        if let Some(session) = &self.session {
            self.channels[i].flush_resolved_confirms(session, &mut self.out);
            self.channels[i].shutdown(session);
        }
        tracing::debug!(peer = %self.peer, channel, code = e.code.code(), text = %e.text, "channel error");
        write_channel_close(&mut self.out, channel, &e);
    }

    pub(super) fn on_unopened_channel(
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
                let Some(session) = &self.session else {
                    return Err(amqp_error!(ChannelError, "expected 'channel.open'"));
                };
                // Same as RabbitMQ: after channel_max, the user's limit over all of the
                // user's connections; refused, the connection closes.
                let user_slot = self
                    .broker
                    .open_user_channel(&session.user_slot)
                    .map_err(|max| {
                        amqp_error!(
                            NotAllowed,
                            "number of channels opened for user '{}' has reached the maximum allowed user limit of ({})",
                            session.user.name,
                            max
                        )
                    })?;
                let channel = Channel::new(
                    id,
                    self.broker.config.limits.max_unacked_per_channel,
                    session,
                    user_slot,
                );
                self.channels.insert(at, Box::new(channel));
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
            // Same as RabbitMQ: a content frame on a channel not yet open meets the
            // channel's content assembler, which expects a method first.
            None => Err(amqp_error!(
                UnexpectedFrame,
                "expected method frame, got non method frame instead"
            )),
        }
    }
}
