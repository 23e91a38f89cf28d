//! Each user's share of something the API holds little of (room for request bodies, turns to
//! build answers): a request takes from its user's share before it takes from everyone's,
//! so one user's many requests wait behind each other rather than ahead of other users'.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The users with a request holding or waiting for a share; a user leaves the map with their
/// last one.
type Users = Arc<Mutex<HashMap<String, Arc<Semaphore>>>>;

/// Shares of `per_user` units each.
#[derive(Debug)]
pub struct UserShares {
    /// Units in one user's share.
    per_user: u32,
    users: Users,
}

/// Units taken from a user's share, given back when dropped.
#[derive(Debug)]
pub struct UserShare {
    permit: Option<OwnedSemaphorePermit>,
    name: String,
    users: Users,
}

impl Drop for UserShare {
    fn drop(&mut self) {
        let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        drop(self.permit.take());
        // Others of this user's requests clone the semaphore under this lock, so a count of
        // one (the map's) means none holds or waits for it.
        if users
            .get(&self.name)
            .is_some_and(|share| Arc::strong_count(share) == 1)
        {
            users.remove(&self.name);
        }
    }
}

impl UserShares {
    pub fn new(per_user: u32) -> Self {
        UserShares {
            per_user,
            users: Arc::default(),
        }
    }

    /// Takes `units` of `user`'s share, waiting until they are free (`None`: more than a
    /// share). Cancelled while it waits, it leaves nothing behind.
    pub async fn take(&self, user: &str, units: u32) -> Option<UserShare> {
        if units > self.per_user {
            // A semaphore waits for permits it may be given later: this would wait forever.
            return None;
        }
        let (mut share, semaphore) = self.share_of(user);
        share.permit = Some(semaphore.acquire_many_owned(units).await.ok()?);
        Some(share)
    }

    /// Units in one user's share.
    pub fn per_user(&self) -> u32 {
        self.per_user
    }

    /// Takes `units` of `user`'s share if they are free now, without waiting (`None`: they
    /// are not, or more than a share was asked for).
    pub fn try_take(&self, user: &str, units: u32) -> Option<UserShare> {
        if units > self.per_user {
            return None;
        }
        let (mut share, semaphore) = self.share_of(user);
        share.permit = Some(semaphore.try_acquire_many_owned(units).ok()?);
        Some(share)
    }

    /// An empty share of `user`'s and their semaphore, put in the map if they had none. The
    /// share is made before the semaphore is cloned, so it is dropped after the clone when
    /// the take fails or is cancelled while it waits: it then finds the map's count alone
    /// and removes the user.
    fn share_of(&self, user: &str) -> (UserShare, Arc<Semaphore>) {
        let share = UserShare {
            permit: None,
            name: user.to_owned(),
            users: self.users.clone(),
        };
        let semaphore = {
            let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
            users
                .entry(user.to_owned())
                .or_insert_with(|| Arc::new(Semaphore::new(self.per_user as usize)))
                .clone()
        };
        (share, semaphore)
    }

    /// How many users hold or wait for a share.
    #[cfg(test)]
    pub(super) fn users(&self) -> usize {
        self.users.lock().map_or(0, |u| u.len())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    /// Lets every task that can go on run until it waits.
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    /// Spawns a take of one unit of `user`'s share; the flag says the take has begun.
    fn spawn_take(
        shares: &Arc<UserShares>,
        user: &'static str,
    ) -> (Arc<AtomicBool>, tokio::task::JoinHandle<bool>) {
        let began = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let (shares, began) = (shares.clone(), began.clone());
            async move {
                began.store(true, Ordering::SeqCst);
                shares.take(user, 1).await.is_some()
            }
        });
        (began, task)
    }

    /// A user's second take waits for their first to be given back, while another user's
    /// is served at once; the map forgets users with nothing held or awaited.
    #[tokio::test]
    async fn a_user_waits_for_their_own_share_not_for_others() {
        let shares = Arc::new(UserShares::new(1));
        let first = shares.take("a", 1).await;
        assert!(first.is_some());
        let (began, again) = spawn_take(&shares, "a");
        settle().await;
        assert!(began.load(Ordering::SeqCst));
        assert!(!again.is_finished(), "a's second take waits for the first");
        let other = shares.take("b", 1).await;
        assert!(other.is_some(), "b is served while a waits");
        drop(first);
        assert!(
            again.await.unwrap_or(false),
            "a's second is served once the first is back"
        );
        drop(other);
        assert_eq!(shares.users(), 0);
        assert!(shares.take("d", 2).await.is_none(), "more than a share");
        assert_eq!(shares.users(), 0);
    }

    /// A take cancelled while it waits leaves nothing behind, even when it is the last to
    /// go: here the units it waited for were given to it, unpolled, before it was dropped.
    #[tokio::test]
    async fn a_cancelled_take_leaves_no_user_behind() {
        let shares = Arc::new(UserShares::new(1));
        let held = shares.take("c", 1).await;
        let (began, waiting) = spawn_take(&shares, "c");
        settle().await;
        assert!(began.load(Ordering::SeqCst));
        assert!(!waiting.is_finished());
        drop(held);
        assert_eq!(shares.users(), 1, "the waiting take still has c's share");
        waiting.abort();
        assert!(waiting.await.is_err(), "cancelled");
        assert_eq!(shares.users(), 0, "a cancelled take leaves nothing behind");
    }
}
