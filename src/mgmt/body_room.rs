//! Room for request bodies: the API holds at most [`MAX_BODY_BYTES_IN_FLIGHT`] of them at
//! once, and one user at most [`MAX_BODY_BYTES_PER_USER`] of that.
//!
//! Each request of a logged-in user reserves what it announces (its `Content-Length`, or
//! [`MAX_BODY_BYTES`] when chunked) before its body is read, and gives it back with its
//! answer. Bodies are read before a handler checks permissions, so without the bound 256
//! connections of management users, whatever their permissions, could make the broker hold
//! 5 GiB; and without the share per user, one user with no permissions anywhere, trickling
//! four large bodies, kept every other user's changes waiting and then refused (503).

use std::time::Duration;

use tokio::sync::{Semaphore, SemaphorePermit};

use super::http::ApiError;
use super::user_shares::{UserShare, UserShares};

/// The largest request body taken (a definitions import is the largest there is); RabbitMQ's
/// `management.http.max_body_size` is the same 20 MiB.
pub const MAX_BODY_BYTES: usize = 20 * 1024 * 1024;

/// Request bodies the API holds at once, at most.
pub const MAX_BODY_BYTES_IN_FLIGHT: usize = 64 * 1024 * 1024;

/// Request bodies one user's requests hold at once, at most: one body of the largest size,
/// and room beside it for small ones (a user importing definitions can still make changes).
/// Reservations are served in turn, so a second large one waiting holds up that user's
/// small ones behind it, until it has room or gives up.
pub const MAX_BODY_BYTES_PER_USER: usize = MAX_BODY_BYTES + 4 * 1024 * 1024;

/// How long a request waits for room before it is answered 503.
pub const BODY_ROOM_WAIT_S: u64 = 5;

/// The room, counted in KiB.
#[derive(Debug)]
pub struct BodyRoom {
    all: Semaphore,
    /// Each user's share of `all`.
    users: UserShares,
}

/// Room held for one request's body, given back when dropped.
pub struct Reserved<'a> {
    _all: SemaphorePermit<'a>,
    /// Given back after `_all`, the order they were taken in reverse.
    _user: UserShare,
}

impl Default for BodyRoom {
    fn default() -> Self {
        BodyRoom {
            all: Semaphore::new(MAX_BODY_BYTES_IN_FLIGHT / 1024),
            users: UserShares::new((MAX_BODY_BYTES_PER_USER / 1024) as u32),
        }
    }
}

impl BodyRoom {
    /// Reserves room for `announced` bytes of body for `user`, first among their share and
    /// then among everyone's, waiting up to [`BODY_ROOM_WAIT_S`] for both.
    pub async fn reserve(
        &self,
        user: &str,
        announced: usize,
    ) -> Result<Option<Reserved<'_>>, ApiError> {
        if announced == 0 {
            return Ok(None);
        }
        let kib = announced.min(MAX_BODY_BYTES).div_ceil(1024) as u32;
        let wait = Duration::from_secs(BODY_ROOM_WAIT_S);
        let reserved = tokio::time::timeout(wait, async {
            let user = self.users.take(user, kib).await?;
            let all = self.all.acquire_many(kib).await.ok()?;
            Some((all, user))
        })
        .await;
        match reserved {
            Ok(Some((all, user))) => Ok(Some(Reserved {
                _all: all,
                _user: user,
            })),
            _ => Err(ApiError::unavailable(
                "too many request bodies at once; try again",
            )),
        }
    }
}
