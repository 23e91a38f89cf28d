//! Flow control under memory and disk alarms, as RabbitMQ's reader does it.
//!
//! When an alarm is raised every open connection starts *blocking*: nothing changes until it
//! publishes. Its next content frame, a message's header or a body frame, blocks it: the
//! broker stops processing and reading its input (the rest of that message waits in the
//! buffer), and a client that announced the `connection.blocked` capability is told why.
//! When the alarms clear, it is unblocked (and told so, if it was told it was blocked) and
//! reading resumes. A connection that only consumes is never blocked, so consumers keep
//! draining the queues.

use amq_protocol::protocol::{AMQPClass, connection as amqp_connection};
use tokio::time::Instant;

use super::{Connection, Flow, Phase};
use crate::broker::stats::FlowState;
use crate::protocol::method::write_method;

impl Connection {
    /// An alarm was raised or cleared.
    pub(super) fn on_alarm(&mut self) {
        let raised = *self.alarms.borrow_and_update();
        if raised.any() {
            if self.flow == Flow::Running && matches!(self.phase, Phase::Running) {
                self.set_flow(Flow::Blocking);
            }
            return;
        }
        if let Flow::Blocked { told } = self.flow {
            if told {
                write_method(
                    self.out.buf(),
                    0,
                    &AMQPClass::Connection(amqp_connection::AMQPMethod::Unblocked(
                        amqp_connection::Unblocked {},
                    )),
                );
            }
            // What arrived while blocked was not looked at; heartbeats count from now.
            self.last_recv = Instant::now();
            tracing::info!(peer = %self.peer, "connection unblocked");
        }
        self.set_flow(Flow::Running);
    }

    /// The connection just opened: it starts blocking if an alarm is raised already.
    pub(super) fn start_flow(&mut self) {
        if self.alarms.borrow_and_update().any() {
            self.set_flow(Flow::Blocking);
        }
    }

    /// A content frame arrived: under an alarm, this blocks the connection. Body frames
    /// count as well as headers (as in RabbitMQ's reader): a publisher that had begun
    /// messages before the alarm would otherwise go on sending their bodies, up to
    /// `channel_max` messages of `max_message_size` each, and never be blocked.
    pub(super) fn on_content_frame(&mut self) {
        // A connection the frame's error just closed is not blocked: nothing follows its
        // Connection.Close.
        if self.flow != Flow::Blocking || !matches!(self.phase, Phase::Running) {
            return;
        }
        let told = self.capabilities.connection_blocked;
        if told {
            let reason = self.alarms.borrow().reason();
            write_method(
                self.out.buf(),
                0,
                &AMQPClass::Connection(amqp_connection::AMQPMethod::Blocked(
                    amqp_connection::Blocked {
                        reason: crate::protocol::error::reply_text(reason),
                    },
                )),
            );
        }
        tracing::info!(peer = %self.peer, "connection blocked by a resource alarm");
        self.set_flow(Flow::Blocked { told });
    }

    /// Moves to `flow`, and shows it to operators as the connection's state.
    fn set_flow(&mut self, flow: Flow) {
        self.flow = flow;
        let state = match flow {
            Flow::Running => FlowState::Running,
            Flow::Blocking => FlowState::Blocking,
            Flow::Blocked { .. } => FlowState::Blocked,
        };
        self.outbox
            .info
            .flow
            .store(state as u8, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether input is held back by an alarm.
    pub(super) fn is_blocked(&self) -> bool {
        matches!(self.flow, Flow::Blocked { .. })
    }
}
