//! What the channels of an open connection share: who logged in, to which vhost, with what
//! limits and client capabilities. Fixed once Connection.Open succeeds.

use std::sync::Arc;

use amq_protocol::types::{AMQPValue, FieldTable};

use super::outbox::Outbox;
use crate::auth::User;
use crate::auth::access::{Permission, Resource};
use crate::broker::Broker;
pub use crate::broker::budget::{Budget, Share};
use crate::broker::exchange::{Exchange, ExchangeKind};
use crate::broker::user_limits::UserConnection;
use crate::broker::vhost::checks::Check;
use crate::broker::vhost::{ConnectionSlot, VirtualHost};
use crate::protocol::error::AmqpResult;
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
    /// Counts this connection against its user's `max-connections`, and opens its channels
    /// against the user's `max-channels`.
    pub user_slot: UserConnection,
    /// What this connection's consumers hold, against `connection_consumer_bytes`.
    pub consumer_budget: Arc<Budget>,
}

impl Session {
    /// Whether this connection's user may do what needs `permission` to `resource` in its
    /// vhost; refused with RabbitMQ's 403 and text.
    pub fn authorize(&self, resource: Resource<'_>, permission: Permission) -> AmqpResult<()> {
        self.broker
            .access
            .check(&self.user.name, &self.vhost.name, resource, permission)
    }

    /// Each of `checks` ([`crate::broker::vhost::checks`]), in order.
    pub fn authorize_all(&self, checks: Vec<Check<'_>>) -> AmqpResult<()> {
        checks
            .into_iter()
            .try_for_each(|(resource, permission)| self.authorize(resource, permission))
    }

    /// For a topic exchange, whether the user's topic permissions allow this routing key
    /// (`Write` to publish, `Read` to bind from it); other exchanges have no topic checks.
    pub fn authorize_topic(
        &self,
        exchange: &Exchange,
        routing_key: &[u8],
        permission: Permission,
    ) -> AmqpResult<()> {
        if exchange.kind != ExchangeKind::Topic {
            return Ok(());
        }
        self.broker.access.check_topic(
            &self.user.name,
            &self.vhost.name,
            &exchange.name,
            routing_key,
            permission,
        )
    }
}
