//! Lepus: an AMQP 0-9-1 message broker that existing RabbitMQ clients use unchanged.
//!
//! `ARCHITECTURE.md` at the top of the repository is the map: the layers, the path a message
//! takes from socket to queue to consumer to disk, and the invariants that hold along it. The
//! layers, top to bottom (each imports only those below it):
//!
//! - [`fuzz`]: entry points for the fuzzer, each taking arbitrary bytes.
//! - [`server`]: wires the others together (listeners, connection tasks, shutdown).
//! - [`amqp`]: the AMQP 0-9-1 session layer: connections and channels.
//! - [`net`]: listeners and the transport a connection speaks over.
//! - [`mgmt`]: the admin socket (and, to come, the management HTTP API).
//! - [`broker`]: vhosts, exchanges, queues, consumers, dead-lettering, timers, memory.
//! - [`auth`]: users, password hashes, SASL mechanisms, randomness.
//! - [`store`]: durability in bytes: queue logs, the sync thread, definitions.
//! - [`protocol`]: the wire format and the reply codes errors become.
//! - [`config`]: configuration and every limit.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! let server = lepus::Server::start(lepus::Config::for_tests()).await?;
//! println!("AMQP on {}", server.local_addr());
//! server.shutdown().await;
//! # Ok(()) }
//! ```

pub mod amqp;
pub mod auth;
pub mod broker;
pub mod config;
pub mod fuzz;
pub mod mgmt;
pub mod net;
pub mod protocol;
pub mod server;
pub mod store;

pub use config::Config;
pub use server::Server;
