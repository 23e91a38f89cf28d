//! Lepus: an AMQP 0-9-1 message broker that existing RabbitMQ clients use unchanged.
//!
//! `ARCHITECTURE.md` at the top of the repository is the map: the modules, the path a
//! message takes from socket to queue to consumer, and the invariants that hold along it.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! let server = lepus::Server::start(lepus::Config::for_tests()).await?;
//! println!("AMQP on {}", server.local_addr());
//! server.shutdown().await;
//! # Ok(()) }
//! ```

pub mod arguments;
pub mod auth;
pub mod binding;
pub mod broker;
pub mod channel;
pub mod config;
pub mod confirm;
pub mod connection;
pub mod consumer;
pub mod dead_letter;
pub mod direct_reply_to;
pub mod error;
pub mod exchange;
pub mod headers;
pub mod message;
pub mod naming;
pub mod outbox;
pub mod output;
pub mod policy;
pub mod prefetch;
pub mod protocol;
pub mod queue;
pub mod server;
pub mod session;
pub mod store;
pub mod timer;
pub mod topic;
pub mod vhost;

pub use config::Config;
pub use server::Server;
