//! What the channels of an open connection share: who logged in, to which vhost, with what
//! limits and client capabilities. Fixed once Connection.Open succeeds.

use std::sync::Arc;

use amq_protocol::types::{AMQPValue, FieldTable};

use super::outbox::Outbox;
use crate::auth::User;
use crate::broker::Broker;
use crate::broker::vhost::{ConnectionSlot, VirtualHost};
use crate::protocol::table;

/// The capabilities a client announced in Connection.StartOk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientCapabilities {
    /// The client understands a broker-sent Basic.Cancel.
    pub consumer_cancel_notify: bool,
    /// The client wants a Connection.Close when login fails, not just a closed socket.
    pub authentication_failure_close: bool,
    /// The client understands Connection.Blocked and Connection.Unblocked.
    pub connection_blocked: bool,
}

impl ClientCapabilities {
    /// Reads `client_properties.capabilities`; only boolean `true` counts, as in RabbitMQ.
    pub fn from_client_properties(props: &FieldTable) -> Self {
        let caps = match table::get(props, "capabilities") {
            Some(AMQPValue::FieldTable(t)) => t,
            _ => return ClientCapabilities::default(),
        };
        let on = |name: &str| matches!(table::get(caps, name), Some(AMQPValue::Boolean(true)));
        ClientCapabilities {
            consumer_cancel_notify: on("consumer_cancel_notify"),
            authentication_failure_close: on("authentication_failure_close"),
            connection_blocked: on("connection.blocked"),
        }
    }
}

/// An open connection's context, lent to its channels.
#[derive(Debug)]
pub struct Session {
    pub broker: Arc<Broker>,
    pub vhost: Arc<VirtualHost>,
    pub user: Arc<User>,
    /// Identifies the connection, e.g. as the owner of exclusive queues.
    pub connection_id: u64,
    /// Where queues push deliveries for this connection's consumers.
    pub outbox: Arc<Outbox>,
    /// The negotiated frame_max: body frames are split to fit it.
    pub frame_max: u32,
    pub capabilities: ClientCapabilities,
    /// Counts this connection against the vhost's `max-connections` while the session lives.
    pub _slot: ConnectionSlot,
}
