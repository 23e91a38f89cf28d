//! The network layer: listening sockets and the transport a connection speaks over.
//!
//! [`Transport`] is the one type the AMQP connection task reads from and writes to, whatever
//! is underneath (plain TCP today; TLS is another variant of the same type), so the hot path
//! is written once. [`Listener`] binds an address and accepts transports. This layer knows
//! nothing of AMQP: the server wires accepted transports to the connection task.

pub mod listener;
pub mod tls;
pub mod transport;

pub use listener::Listener;
pub use transport::Transport;
