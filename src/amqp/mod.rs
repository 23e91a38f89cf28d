//! The AMQP 0-9-1 session layer: a client connection ([`connection`]), the channels inside it
//! ([`channel`]), and what they share: the session ([`session`]), the input parsed in place
//! ([`input`]), the outbox queues push deliveries into ([`outbox`]), the output waiting for
//! the socket ([`output`]) and publisher confirms ([`confirm`]).
//!
//! This layer drives the broker (`crate::broker`) and speaks the wire format
//! (`crate::protocol`) over a transport (`crate::net`); nothing below imports it.

pub mod channel;
pub mod confirm;
pub mod connection;
pub mod input;
pub mod naming;
pub mod outbox;
pub mod output;
pub mod session;
