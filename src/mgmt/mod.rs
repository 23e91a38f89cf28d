//! Management: how operators see and change the broker while it runs.
//!
//! Everything here is HTTP (axum on hyper) over the broker's own state: it reads and changes
//! the broker through its public interface and never reaches into AMQP connections (it sees
//! them through what they registered, [`crate::broker::stats::ConnectionInfo`], and closes
//! them through [`crate::broker::connections::ConnectionControl`]).
//!
//! - [`api`]: the router, HTTP Basic on the management listener (RabbitMQ's port 15672), and
//!   the same routes on the admin socket ([`admin`]) for `lepusctl`, where the socket file's
//!   permissions are the authorisation (as LavinMQ's `lavinmqctl`).
//! - [`http`]: callers and their tags, RabbitMQ's error bodies.
//! - [`list`]: RabbitMQ's list parameters (sorting, filters, columns, pages); whole lists are
//!   written as the client reads them.
//! - [`body_room`], [`answer_room`]: how much request bodies and answers may hold at once;
//!   [`user_shares`]: each user's share of the body room and of the turns to build answers.
//! - One file per resource: [`overview`], [`vhosts`] (with limits and policies), [`users`],
//!   [`queues`], [`exchanges`], [`bindings`], [`connections`] (with channels and consumers),
//!   [`definitions`]; [`messages`] converts messages to and from JSON.
//! - [`rates`]: message totals, and rates from counters sampled every few seconds.
//! - [`metrics`]: the Prometheus endpoint (RabbitMQ's port 15692).
//! - [`ui`]: the web UI, static files in `www/` that use the API like any other client.

pub mod admin;
pub mod answer_room;
pub mod api;
pub mod bindings;
pub mod body_room;
pub mod connections;
pub mod definitions;
pub mod exchanges;
pub mod health;
pub mod http;
pub mod list;
pub mod listener;
pub mod messages;
pub mod metrics;
pub mod overview;
pub mod queues;
pub mod rates;
pub mod state;
pub mod ui;
pub mod user_limits;
pub mod user_shares;
pub mod users;
pub mod vhosts;
