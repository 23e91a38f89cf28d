//! The permission checks RabbitMQ makes for a declare or a binding beyond the one on the
//! object named. AMQP channels and the management API share them: RabbitMQ runs the API's
//! declares and bindings over a channel of its own, so the same checks apply to both.

use amq_protocol::types::FieldTable;

use super::VirtualHost;
use crate::auth::access::{Permission, Resource};
use crate::protocol::table;

/// One check: this permission on this resource.
pub type Check<'a> = (Resource<'a>, Permission);

impl VirtualHost {
    /// Besides configure on it: a new exchange with an alternate exchange needs read on
    /// itself and write on the alternate (publishing to it writes to the alternate).
    pub fn exchange_declare_checks<'a>(
        &self,
        name: &'a str,
        arguments: &'a FieldTable,
    ) -> Vec<Check<'a>> {
        if name.starts_with("amq.") || self.exchange(name).is_some() {
            return Vec::new();
        }
        match table::get(arguments, "alternate-exchange").and_then(table::as_str) {
            Some(alternate) => vec![
                (Resource::Exchange(name), Permission::Read),
                (Resource::Exchange(alternate), Permission::Write),
            ],
            None => Vec::new(),
        }
    }

    /// Besides configure on it: a new queue with a dead-letter exchange needs read on itself
    /// and write on that exchange (its dead letters are published there).
    pub fn queue_declare_checks<'a>(
        &self,
        name: &'a str,
        arguments: &'a FieldTable,
    ) -> Vec<Check<'a>> {
        if self.queue(name).is_some() {
            return Vec::new();
        }
        match table::get(arguments, "x-dead-letter-exchange").and_then(table::as_str) {
            Some(dlx) => vec![
                (Resource::Queue(name), Permission::Read),
                (Resource::Exchange(dlx), Permission::Write),
            ],
            None => Vec::new(),
        }
    }
}

/// Binding or unbinding `source` to `destination`: write on the destination, then (unless
/// either end is the default exchange, which is refused for that) read on the source. A
/// topic source also needs the user's topic read permission on the routing key, which the
/// caller checks with the exchange in hand.
pub fn binding_checks<'a>(destination: Resource<'a>, source: &'a str) -> Vec<Check<'a>> {
    let mut checks = vec![(destination, Permission::Write)];
    if !source.is_empty() && destination != Resource::Exchange("") {
        checks.push((Resource::Exchange(source), Permission::Read));
    }
    checks
}
