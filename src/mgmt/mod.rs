//! Management: how operators see and change the broker while it runs.
//!
//! Everything here is HTTP (axum on hyper) over the broker's own state: it reads and changes
//! the broker through its public interface and never reaches into AMQP connections. The admin
//! socket ([`admin`]) serves operator commands to `lepusctl` on a Unix socket in the data
//! directory, where the file's permissions are the authorisation (as LavinMQ's `lavinmqctl`).

pub mod admin;
pub mod users;
