//! A binding: a rule that an exchange routes matching messages to a queue or to another
//! exchange.

use std::sync::Arc;

use amq_protocol::types::FieldTable;

use crate::exchange::Exchange;
use crate::queue::Queue;

/// Where a binding leads.
#[derive(Clone)]
pub enum Destination {
    Queue(Arc<Queue>),
    Exchange(Arc<Exchange>),
}

impl Destination {
    /// A key that identifies the destination object (not its name: a queue deleted and
    /// declared again is a different destination).
    pub fn identity(&self) -> usize {
        match self {
            Destination::Queue(q) => Arc::as_ptr(q) as usize,
            Destination::Exchange(x) => Arc::as_ptr(x) as usize,
        }
    }
}

impl PartialEq for Destination {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Destination::Queue(a), Destination::Queue(b)) => Arc::ptr_eq(a, b),
            (Destination::Exchange(a), Destination::Exchange(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl std::fmt::Debug for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Destination::Queue(q) => write!(f, "queue {:?}", q.name),
            Destination::Exchange(x) => write!(f, "exchange {:?}", x.name),
        }
    }
}

/// A binding from some source exchange. Two bindings are the same binding when destination,
/// routing key and arguments (with their types) are equal, as in RabbitMQ.
#[derive(Debug, Clone, PartialEq)]
pub struct Binding {
    pub destination: Destination,
    pub routing_key: String,
    pub arguments: FieldTable,
}
