//! The permission checks RabbitMQ makes for a declare or a binding beyond the one on the
//! object named. AMQP channels and the management API share them: RabbitMQ runs the API's
//! declares and bindings over a channel of its own, so the same checks apply to both.

use amq_protocol::types::FieldTable;

use crate::auth::access::{Permission, Resource};
use crate::protocol::error::AmqpResult;
use crate::protocol::table;

/// One check: this permission on this resource.
pub type Check<'a> = (Resource<'a>, Permission);

/// Makes the checks a declare that creates its object needs (`new_exchange_checks`,
/// `new_queue_checks`), or refuses it. The declare calls it under the vhost's topology
/// lock, once it knows it creates the object: checked before, with the object there, a
/// delete in between let the declare create one nobody checked.
pub type AuthorizeNew<'f> = &'f dyn Fn(Vec<Check<'_>>) -> AmqpResult<()>;

/// For declares that need no checks: the definitions an administrator imports, and
/// objects the broker makes itself.
pub fn no_checks(_: Vec<Check<'_>>) -> AmqpResult<()> {
    Ok(())
}

/// Besides configure on it: a new exchange with an alternate exchange needs read on
/// itself and write on the alternate (publishing to it writes to the alternate).
pub fn new_exchange_checks<'a>(name: &'a str, arguments: &'a FieldTable) -> Vec<Check<'a>> {
    if name.starts_with("amq.") {
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
pub fn new_queue_checks<'a>(name: &'a str, arguments: &'a FieldTable) -> Vec<Check<'a>> {
    match table::get(arguments, "x-dead-letter-exchange").and_then(table::as_str) {
        Some(dlx) => vec![
            (Resource::Queue(name), Permission::Read),
            (Resource::Exchange(dlx), Permission::Write),
        ],
        None => Vec::new(),
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
