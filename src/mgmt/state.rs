//! What the management handlers share: the broker, the rate sampler, the cluster name and
//! the listeners to show.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use super::answer_room::AnswerRoom;
use super::body_room::BodyRoom;
use super::http::{ApiError, ApiResult, Caller};
use super::rates::Rates;
use super::user_shares::{UserShare, UserShares};
use crate::broker::Broker;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Answers built at once whose cost grows with the broker (see [`Mgmt::build`]): each holds
/// its list while it is made, and the machine has this many cores to give them.
pub const BUILDS_AT_ONCE: usize = 2;

/// Of those, one user's requests build at most this many at once: a user with no
/// permissions anywhere, sending lists filtered by costly regular expressions (a quarter of
/// a second each to compile) over 32 connections, held every turn and kept everyone else's
/// lists and overview waiting for seconds.
pub const BUILDS_AT_ONCE_PER_USER: u32 = 1;

/// Changes whose cost grows with the broker (a definitions import, a vhost's deletion, a
/// policy applied to every queue and exchange it matches) run one at a time, on turns of
/// their own (see [`Mgmt::build_change`]): an import may declare thousands of queues, and
/// lists and the overview should not wait for it.
pub const CHANGES_AT_ONCE: usize = 1;

/// What the management handlers share.
#[derive(Debug)]
pub struct Mgmt {
    pub broker: Arc<Broker>,
    /// Message rates, sampled in the background while the API is served.
    pub rates: Arc<Rates>,
    /// The broker's listeners (protocol and address), for the overview.
    pub listeners: RwLock<Vec<(&'static str, SocketAddr)>>,
    /// Prometheus scrapes run one at a time: each walks every queue and channel, and the
    /// endpoint asks for no login. One client (by address, `listener::peer_key`) waits for
    /// its own scrape before it waits for everyone's turn, so a client scraping in a loop
    /// over its 32 connections keeps others waiting for at most one scrape of its.
    pub scraping: BuildTurns,
    /// Room for request bodies: a request reserves what it announces before its body is
    /// read.
    pub bodies: BodyRoom,
    /// Room for the API's answers built whole, held until their clients have read them.
    pub answers: AnswerRoom,
    /// The same for Prometheus scrapes, apart: scrapers need no login.
    pub scrape_answers: AnswerRoom,
    /// Turns to build an answer off the runtime ([`BUILDS_AT_ONCE`], [`Mgmt::build`]).
    pub building: BuildTurns,
    /// Turns to make a large change ([`CHANGES_AT_ONCE`], [`Mgmt::build_change`]).
    pub changing: Arc<tokio::sync::Semaphore>,
}

impl Mgmt {
    /// The node's name, as RabbitMQ's `rabbit@host` (`Config::node_name`).
    pub fn node(&self) -> &str {
        &self.broker.config.node_name
    }

    pub fn new(broker: Arc<Broker>) -> Arc<Mgmt> {
        Arc::new(Mgmt {
            rates: Rates::new(),
            broker,
            listeners: RwLock::new(Vec::new()),
            scraping: BuildTurns::new(1, 1),
            bodies: BodyRoom::default(),
            answers: AnswerRoom::default(),
            scrape_answers: AnswerRoom::for_scrapes(),
            building: BuildTurns::new(BUILDS_AT_ONCE, BUILDS_AT_ONCE_PER_USER),
            changing: Arc::new(tokio::sync::Semaphore::new(CHANGES_AT_ONCE)),
        })
    }

    /// Runs `build`, an answer whose cost grows with the broker (a list of every queue, made
    /// JSON to be sorted; the definitions), on the blocking pool rather than on the runtime's
    /// workers, which the AMQP connections run on: a list of 50,000 queues sorted by
    /// `messages` takes 0.4 s, and held up every connection of its worker as long (an AMQP
    /// round trip waited 440 ms). [`BUILDS_AT_ONCE`] run at a time, as many as there were
    /// workers to run them before; the other requests wait their turn without a thread.
    /// A user waits for their own share of the turns ([`BUILDS_AT_ONCE_PER_USER`]) before
    /// they wait for one of everyone's.
    pub async fn build(
        self: &Arc<Self>,
        caller: &Caller,
        build: impl FnOnce(&Arc<Mgmt>) -> ApiResult + Send + 'static,
    ) -> ApiResult {
        let Some(turn) = self.building.take(&caller.share_key()).await else {
            return Err(ApiError::internal("the answer could not be built"));
        };
        self.off_runtime(turn, build).await
    }

    /// [`Mgmt::build`] for a change whose cost grows with the broker, on turns of its own
    /// ([`CHANGES_AT_ONCE`]).
    pub async fn build_change<T: Send + 'static>(
        self: &Arc<Self>,
        build: impl FnOnce(&Arc<Mgmt>) -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let Ok(turn) = self.changing.clone().acquire_owned().await else {
            return Err(ApiError::unavailable("the management API is stopping"));
        };
        self.off_runtime(turn, build).await
    }

    /// Runs `build` on the blocking pool, holding `turn` until it is done. The turn goes
    /// with the work, not with the request: a client that goes away while its answer is
    /// made does not free a turn for another while the work goes on.
    async fn off_runtime<T: Send + 'static, Turn: Send + 'static>(
        self: &Arc<Self>,
        turn: Turn,
        build: impl FnOnce(&Arc<Mgmt>) -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let m = self.clone();
        tokio::task::spawn_blocking(move || {
            let answer = build(&m);
            drop(turn);
            answer
        })
        .await
        .unwrap_or_else(|e| {
            tracing::error!(error = %e, "a management answer failed to build");
            Err(ApiError::internal("the answer could not be built"))
        })
    }

    /// The listeners as the overview lists them.
    pub fn listeners(&self, node: &str) -> Vec<serde_json::Value> {
        let listeners = self.listeners.read().unwrap_or_else(|e| e.into_inner());
        listeners
            .iter()
            .map(|(protocol, addr)| {
                serde_json::json!({
                    "node": node,
                    "protocol": protocol,
                    "ip_address": addr.ip().to_string(),
                    "port": addr.port(),
                    "socket_opts": {},
                })
            })
            .collect()
    }
}

/// Turns to build answers: [`BUILDS_AT_ONCE`] in all, [`BUILDS_AT_ONCE_PER_USER`] for one
/// user, whose share is taken first.
#[derive(Debug)]
pub struct BuildTurns {
    all: Arc<Semaphore>,
    users: UserShares,
}

/// A turn to build an answer, given back when dropped.
#[derive(Debug)]
pub struct BuildTurn {
    _all: OwnedSemaphorePermit,
    /// Given back after `_all`, the order they were taken in reverse.
    _user: UserShare,
}

impl BuildTurns {
    pub fn new(all: usize, per_user: u32) -> Self {
        BuildTurns {
            all: Arc::new(Semaphore::new(all)),
            users: UserShares::new(per_user),
        }
    }

    /// Waits for a turn of `user`'s share, then for one of everyone's.
    pub async fn take(&self, user: &str) -> Option<BuildTurn> {
        let user = self.users.take(user, 1).await?;
        let all = self.all.clone().acquire_owned().await.ok()?;
        Some(BuildTurn {
            _all: all,
            _user: user,
        })
    }
}

#[cfg(test)]
mod tests;
